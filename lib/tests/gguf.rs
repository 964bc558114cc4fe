//! GGUF files: every quantisation type dequantised exactly as the `gguf` package's
//! `dequantize`, and hostile files (truncated, unknown types, unsupported
//! architectures, sizes that disagree with their type) refused with an error naming
//! the file, the tensor and the type, before anything is loaded. The files tchlab
//! writes read back in tchlab, in the `gguf` package and in llama.cpp itself.

mod common;

use common::{fixture_tensor, fixtures, scratch};
use tch::Device;
use tchlab::checkpoint;
use tchlab::formats::gguf;

#[test]
fn every_type_dequantises_as_the_gguf_package_does() {
    let path = fixtures().join("quants.gguf");
    let meta = gguf::read_metadata(&path).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let names: Vec<&str> = meta.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 11, "{names:?}");
    for info in &meta.tensors {
        let kind = info.name.strip_prefix("t.").unwrap();
        let ours = gguf::read_tensor(&file, &meta, info).unwrap();
        let theirs = fixture_tensor(&fixtures().join("quants.safetensors"), kind);
        assert_eq!(ours.size(), theirs.size(), "{kind} shape");
        assert!(ours.equal(&theirs), "{kind}: not bit for bit the gguf package's values (max |diff| {:e})", common::max_abs_diff(&ours, &theirs));
    }
}

/// A GGUF file of `arch` with one tensor `w` of `dims` (ggml order), type `type_id` and
/// `data` bytes.
fn gguf_file(arch: &str, dims: &[u64], type_id: u32, data: usize) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    string(&mut b, arch);
    string(&mut b, "w");
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(type_id.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(std::iter::repeat_n(0u8, data));
    b
}

fn refused(name: &str, bytes: &[u8]) -> String {
    let dir = scratch("gguf-bad");
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = match checkpoint::load(&path, Device::Cpu) {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(name), "the error names the file: {err}");
    err
}

#[test]
fn hostile_files_are_refused_by_name() {
    // A well-formed file of 64 float32 values, to show the cases below differ only where they say.
    let good = gguf_file("llama", &[64], 0, 256);
    assert!(gguf::read_metadata(&{
        let p = scratch("gguf-good").join("good.gguf");
        std::fs::write(&p, &good).unwrap();
        p
    })
    .is_ok());

    let err = refused("truncated.gguf", &good[..good.len() - 10]);
    assert!(err.contains("truncated") && err.contains("`w`") && err.contains("F32"), "{err}");
    let err = refused("header-cut.gguf", &good[..30]);
    assert!(err.contains("truncated"), "{err}");
    let err = refused("q3k.gguf", &gguf_file("llama", &[256], 11, 110));
    assert!(err.contains("`w`") && err.contains("Q3_K"), "{err}");
    let err = refused("unknown-type.gguf", &gguf_file("llama", &[64], 77, 256));
    assert!(err.contains("`w`") && err.contains("ggml type 77"), "{err}");
    let err = refused("mamba.gguf", &gguf_file("mamba", &[64], 0, 256));
    assert!(err.contains("`mamba`") && err.contains("llama"), "{err}");
    // 40 values are not whole Q8_0 blocks of 32.
    let err = refused("partial-block.gguf", &gguf_file("llama", &[40], 8, 68));
    assert!(err.contains("`w`") && err.contains("Q8_0") && err.contains("block"), "{err}");
    // Dimensions whose product overflows.
    let err = refused("huge.gguf", &gguf_file("llama", &[1 << 40, 1 << 40], 0, 256));
    assert!(err.contains("`w`") && err.contains("overflow"), "{err}");
    // A claimed string far longer than the file.
    let mut long_key = good.clone();
    long_key[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = refused("long-key.gguf", &long_key);
    assert!(err.contains("truncated or corrupt"), "{err}");
    let mut version = good.clone();
    version[4..8].copy_from_slice(&1u32.to_le_bytes());
    let err = refused("v1.gguf", &version);
    assert!(err.contains("version 1"), "{err}");
    let err = refused("not-gguf.gguf", b"PK\x03\x04 this is a zip");
    assert!(err.contains("not a GGUF file"), "{err}");
    // A llama file whose metadata lacks the model's sizes.
    let err = refused("no-config.gguf", &good);
    assert!(err.contains("llama.block_count"), "{err}");
}

/// The greedy continuation of the token ids of `prompt` in the session, `n` tokens.
fn lab_greedy(s: &mut tchlab::session::Session, prompt: &str, n: usize) -> (Vec<i64>, Vec<i64>) {
    let ids = common::ok(s, &format!("%tokenize \"{prompt}\""))["ids"].clone();
    let generated = common::ok(s, &format!("%generate \"{prompt}\" --max-tokens {n}"))["generated_ids"].clone();
    (serde_json::from_value(ids).unwrap(), serde_json::from_value(generated).unwrap())
}

#[test]
fn smollm2_written_as_gguf_reads_back_in_tchlab_the_gguf_package_and_llama_cpp() {
    let _serial = common::serial();
    let dir = scratch("gguf-export");
    let source: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("smollm2.json")).unwrap()).unwrap();
    let source = source["file"].as_str().unwrap();
    let mut s = tchlab::session::Session::new();
    common::ok(&mut s, &format!("%device cpu\n%load {source}"));
    let checksum = common::ok(&mut s, "%status --checksum")["weights_checksum"].clone();
    let prompts = ["The capital of France is", "def fibonacci(n):"];
    let float: Vec<(Vec<i64>, Vec<i64>)> = prompts.iter().map(|p| lab_greedy(&mut s, p, 16)).collect();
    for kind in ["f32", "f16", "q8_0", "q4_0", "q4_1"] {
        let saved = common::ok(&mut s, &format!("%save {}/smollm2-{kind}.gguf --type {kind}", dir.display()));
        assert_eq!((saved["gguf"]["kind"].as_str(), saved["gguf"]["tensors"].as_i64()), (Some(kind), Some(272)), "{saved}");
    }
    let again = common::ok(&mut s, &format!("%save {}/smollm2-f32.gguf", dir.display()));
    assert_eq!(again["gguf"]["kind"], "f32", "a file tchlab wrote is replaced");
    common::ok(&mut s, &format!("%load {}/smollm2-f32.gguf", dir.display()));
    assert_eq!(common::ok(&mut s, "%status --checksum")["weights_checksum"], checksum, "the f32 file holds the weights exactly");
    common::ok(&mut s, &format!("%load {}/smollm2-q8_0.gguf", dir.display()));
    let q8: Vec<Vec<i64>> = prompts.iter().map(|p| lab_greedy(&mut s, p, 16).1).collect();
    let lab = serde_json::json!({
        "source": source,
        "prompts": float.iter().zip(&q8).map(|((ids, f32), q8)| serde_json::json!({"ids": ids, "f32": f32, "q8_0": q8})).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("lab.json"), lab.to_string()).unwrap();
    // python/ holds llama_peer, which loads llama.cpp so that it runs on every CPU.
    let python_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../python");
    common::python_agrees(
        &(format!("import sys; sys.path.insert(0, {:?})\n", python_dir.display().to_string())
            + r#"
import json, sys
import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as T, quants
d = sys.argv[1]
lab = json.load(open(d + "/lab.json"))
source, f32 = GGUFReader(lab["source"]), GGUFReader(d + "/smollm2-f32.gguf")
shapes = lambda r: {t.name: tuple(int(x) for x in t.shape) for t in r.tensors}
assert shapes(source) == shapes(f32), "the same tensors, names and shapes as llama.cpp's own file"
value = lambda r, k: r.fields[k].contents()
for key in ["general.architecture", "llama.block_count", "llama.embedding_length", "llama.attention.head_count_kv", "llama.rope.freq_base",
            "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"]:
    assert value(source, key) == value(f32, key), key
# Each type's matrices are the gguf package's quantisation of the f32 file's (ggml's reference code).
reference = {t.name: np.asarray(t.data) for t in f32.tensors}
for kind, qtype in [("f16", T.F16), ("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1)]:
    for t in GGUFReader(d + f"/smollm2-{kind}.gguf").tensors:
        if len(t.shape) == 1:
            assert t.tensor_type == T.F32, (kind, t.name)
        elif t.name.startswith(("token_embd", "blk.0.", "blk.29.")):
            assert t.tensor_type == qtype, (kind, t.name, t.tensor_type)
            ours = np.asarray(t.data).view(np.uint8).reshape(-1)
            theirs = quants.quantize(reference[t.name], qtype).view(np.uint8).reshape(-1)
            assert np.array_equal(ours, theirs), (kind, t.name)
try:
    import llama_peer
except ImportError:
    sys.exit("llama-cpp-python is not installed in the test environment: `make llama-cpp` builds it")
# How many greedy tokens llama.cpp must agree on, fed the lab's prompt ids: measured 16
# of 16 for both files on this machine's CPU; 8 leaves room for another CPU's rounding.
AGREE = 8
for kind in ["f32", "q8_0"]:
    llm = llama_peer.load(d + f"/smollm2-{kind}.gguf", n_ctx=128, n_threads=2, verbose=False, logits_all=True)
    for p in lab["prompts"]:
        llm.reset()
        tokens, out = list(p["ids"]), []
        llm.eval(tokens)
        while len(out) < len(p[kind]):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(nxt)
            llm.eval([nxt])
        agree = next((i for i, (a, b) in enumerate(zip(out, p[kind])) if a != b), len(out))
        print(kind, "agree", agree, "of", len(out))
        assert agree >= min(AGREE, len(out)), (kind, out, p[kind])
"#),
        &dir,
    );
    // About 1.2 GB of files.
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Gemma 3 270M (a SentencePiece vocabulary) written as Q8_0: the file carries the
/// source's vocabulary key for key, the lab reads it back with the same tokens and
/// greedy continuations as the quantised model, and llama.cpp itself loads it and, from
/// the same ids, continues as the lab does.
#[test]
fn gemma3_written_as_gguf_keeps_its_sentencepiece_vocabulary_and_llama_cpp_reads_it() {
    let _serial = common::serial();
    let dir = scratch("gguf-gemma3");
    let source: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("gemma3.json")).unwrap()).unwrap();
    let source = source["file"].as_str().unwrap();
    let mut s = tchlab::session::Session::new();
    common::ok(&mut s, &format!("%device cpu\n%load {source}"));
    let text = "naïve café 😀 Schrödinger\n\n  <b>runs</b>";
    let tokens = common::ok(&mut s, &format!("%tokenize {text:?}"))["ids"].clone();
    let saved = common::ok(&mut s, &format!("%save {}/gemma3-q8_0.gguf --type q8_0", dir.display()));
    assert_eq!(saved["gguf"]["kind"], "q8_0", "{saved}");
    common::ok(&mut s, &format!("%load {}/gemma3-q8_0.gguf", dir.display()));
    assert_eq!(common::ok(&mut s, &format!("%tokenize {text:?}"))["ids"], tokens, "the vocabulary read back tokenizes as the source's");
    let prompts = ["The capital of France is", "def fibonacci(n):"];
    let q8: Vec<(Vec<i64>, Vec<i64>)> = prompts.iter().map(|p| lab_greedy(&mut s, p, 12)).collect();
    let lab = serde_json::json!({
        "source": source,
        "prompts": q8.iter().map(|(ids, out)| serde_json::json!({"ids": ids, "q8_0": out})).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("lab.json"), lab.to_string()).unwrap();
    let python_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../python");
    common::python_agrees(
        &(format!("import sys; sys.path.insert(0, {:?})\n", python_dir.display().to_string())
            + r#"
import json, sys
import numpy as np
from gguf import GGUFReader
d = sys.argv[1]
lab = json.load(open(d + "/lab.json"))
source, ours = GGUFReader(lab["source"]), GGUFReader(d + "/gemma3-q8_0.gguf")
value = lambda r, k: r.fields[k].contents()
keys = [k for k in source.fields if k.startswith("tokenizer.")]
assert "tokenizer.ggml.scores" in keys and value(source, "tokenizer.ggml.model") == "llama", keys
for key in keys:
    assert key in ours.fields and value(source, key) == value(ours, key), key
for key in ["gemma3.block_count", "gemma3.attention.sliding_window", "gemma3.attention.key_length", "gemma3.rope.freq_base"]:
    assert value(source, key) == value(ours, key), key
import llama_peer
AGREE = 8
llm = llama_peer.load(d + "/gemma3-q8_0.gguf", n_ctx=128, n_threads=2, verbose=False, logits_all=True)
for p in lab["prompts"]:
    assert llm.tokenize(bytes(0), add_bos=True, special=True)[:1] == p["ids"][:1], "llama.cpp starts with the same <bos>"
    llm.reset()
    out = []
    llm.eval(list(p["ids"]))
    while len(out) < len(p["q8_0"]):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    agree = next((i for i, (a, b) in enumerate(zip(out, p["q8_0"])) if a != b), len(out))
    print("agree", agree, "of", len(out))
    assert agree >= min(AGREE, len(out)), (out, p["q8_0"])
"#),
        &dir,
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A random Phi-3 (fused `qkv_proj` and `gate_up_proj`, half of each head rotated,
/// grouped-query heads) with a byte-level BPE tokenizer, written as a `phi3` GGUF file:
/// the lab reads it back with the same logits, and llama.cpp itself, fed the same ids,
/// computes the same logits (1e-3 of the largest) at every position.
#[test]
fn phi3_written_as_gguf_reads_back_in_tchlab_and_llama_cpp() {
    let dir = scratch("gguf-phi3");
    let corpus: String = (0..300).map(|i| format!("the quick brown fox {i} jumps over the lazy dog; naïve café {}\n", i * 7)).collect();
    std::fs::write(dir.join("corpus.txt"), corpus).unwrap();
    let tokenizer = tchlab::tokenize::Tokenizer::train_bpe(dir.join("corpus.txt"), 300).unwrap();
    let config = serde_json::json!({
        "model_type": "phi3", "vocab_size": tokenizer.vocab_size(), "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "partial_rotary_factor": 0.5,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": false,
    });
    tch::manual_seed(7);
    let model = tchlab::models::Model::new(tchlab::models::ModelConfig::from_json(&config).unwrap(), tchlab::models::Task::LanguageModel, Device::Cpu).unwrap();
    // Larger weights than the initialisation's, so that logits differ clearly.
    tch::no_grad(|| {
        for (_, mut v) in model.vars.variables() {
            if v.dim() == 2 {
                let _ = v.g_mul_scalar_(10.0);
            }
        }
    });
    // Not `phi3.gguf`: llama.cpp gives the tokens `</s>`, `<unk>` and `<s>` special
    // attributes in any model whose `general.name` (the file's stem, as its converter names
    // files after models) says Phi-3, and fails to load one whose vocabulary lacks them.
    let path = dir.join("tiny-random.gguf");
    let written = checkpoint::gguf_write::save(&model, Some(&tokenizer), None, None, &path, tchlab::formats::quant::GgmlType::F32).unwrap();
    assert_eq!(written.tensors, 3 + 2 * 6, "embeddings, final norm, head and six tensors a block");
    let ids = tokenizer.encode("the lazy dog jumps over the quick brown fox 42 naïve").unwrap();
    let input = tch::Tensor::from_slice(&ids).unsqueeze(0);
    let logits = |m: &tchlab::models::Model| tch::no_grad(|| common::Lm(m).forward(&input, &Default::default(), None).unwrap().logits);
    let ours = logits(&model);
    let read = checkpoint::load(&path, Device::Cpu).unwrap();
    assert_eq!(read.model.config().model_type(), "phi3");
    common::assert_close(&logits(&read.model), &ours, 1e-6, "read back from the GGUF file");
    tchlab::formats::safetensors::write(
        &dir.join("ours.safetensors"),
        &[("logits".into(), ours.squeeze_dim(0)), ("ids".into(), input.squeeze_dim(0))],
        &Default::default(),
    )
    .unwrap();
    let python_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../python");
    common::python_agrees(
        &(format!("import sys; sys.path.insert(0, {:?})\n", python_dir.display().to_string())
            + r#"
import sys
import numpy as np
from safetensors.numpy import load_file
import llama_peer
d = sys.argv[1]
ours = load_file(d + "/ours.safetensors")
llm = llama_peer.load(d + "/tiny-random.gguf", n_ctx=64, n_threads=2, verbose=False, logits_all=True)
llm.eval([int(i) for i in ours["ids"]])
theirs = np.array(llm.scores[: llm.n_tokens])
scale = np.abs(ours["logits"]).max()
diff = np.abs(theirs - ours["logits"]).max()
assert diff < 1e-3 * scale, f"llama.cpp's logits differ by {diff} (largest {scale})"
"#),
        &dir,
    );
}
