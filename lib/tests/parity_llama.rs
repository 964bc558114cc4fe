//! Llama-style and Gemma 3 parity with `transformers`: random `LlamaForCausalLM`
//! (grouped-query attention, `llama3` rope scaling, tied and untied heads),
//! `Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `MistralForCausalLM` (a window of 4 positions)
//! `Gemma3ForCausalLM` (local and global layers, a window of 8) and `GPTNeoXForCausalLM`
//! (Pythia's parallel residual and the sequential form, partial rotary) and `Phi3ForCausalLM`
//! (fused projections, partial rotary, a window of 6) checkpoints,
//! config.json of transformers 4.x and 5.x: logits,
//! greedy generation, eager attention probabilities, one AdamW step, and a save that
//! transformers reads back.

mod common;

use std::collections::BTreeMap;

use common::{assert_close, fixture_tensor, fixtures};
use tch::{Device, Tensor};
use tchlab::checkpoint;
use tchlab::formats::safetensors;
use tchlab::generate::{generate, GenerateOptions};
use tchlab::models::{ForwardOptions, KvCache};

const MODELS: &[&str] = &["llama-gqa", "llama-tied", "qwen2", "qwen3", "llama-v5", "mistral", "gemma3-small", "neox", "neox-sequential", "phi3"];

#[test]
fn logits_greedy_generation_and_attention_match_transformers() {
    for dir in MODELS {
        let path = fixtures().join(dir);
        let loaded = checkpoint::load(&path, Device::Cpu).unwrap();
        assert!(loaded.report.missing.is_empty() && loaded.report.unexpected.is_empty(), "{dir}: {:?}", loaded.report);
        let reference = path.join("reference.safetensors");
        let ids = fixture_tensor(&reference, "input_ids");
        let out = tch::no_grad(|| loaded.model.forward(&ids, None, &ForwardOptions::default(), None).unwrap());
        assert_close(&out.logits.unwrap(), &fixture_tensor(&reference, "logits"), 1e-4, &format!("{dir} logits"));

        let captured =
            tch::no_grad(|| loaded.model.forward(&ids.narrow(0, 0, 1), None, &ForwardOptions { capture_attention: true, ..Default::default() }, None).unwrap());
        for (layer, probs) in captured.attentions.unwrap().iter().enumerate() {
            assert_close(probs, &fixture_tensor(&reference, &format!("attention.{layer}")), 1e-4, &format!("{dir} attention of layer {layer}"));
        }

        let prompt: Vec<i64> = Vec::try_from(fixture_tensor(&reference, "prompt")).unwrap();
        let expected: Vec<i64> = Vec::try_from(fixture_tensor(&reference, "greedy")).unwrap();
        let opts = GenerateOptions { max_new_tokens: 24, stop_ids: loaded.model.config().eos_token_ids(), ..Default::default() };
        assert_eq!(generate(&loaded.model, &prompt, &opts).unwrap(), expected, "{dir}: greedy generation differs from transformers");
    }
}

#[test]
fn a_tied_checkpoint_has_no_lm_head_and_an_untied_one_does() {
    for (dir, tied) in [("llama-tied", true), ("qwen3", true), ("gemma3-small", true), ("llama-gqa", false), ("qwen2", false)] {
        let file = checkpoint::read_file(&fixtures().join(dir).join("model.safetensors")).unwrap();
        assert_eq!(file.iter().any(|(k, _)| k == "lm_head.weight"), !tied, "{dir}: lm_head.weight in the file");
        let loaded = checkpoint::load(fixtures().join(dir), Device::Cpu).unwrap();
        assert_eq!(loaded.model.vars.variables().contains_key("lm_head.weight"), !tied, "{dir}: an lm_head variable");
    }
}

#[test]
fn the_cache_gives_the_logits_of_the_whole_sequence() {
    // Mistral's window (4) is shorter than both parts: the cached keys it no longer sees
    // must stay out of the attention, one new query or several.
    for dir in ["llama-gqa", "mistral", "gemma3-small", "neox", "phi3"] {
        let loaded = checkpoint::load(fixtures().join(dir), Device::Cpu).unwrap();
        let ids = fixture_tensor(&fixtures().join(dir).join("reference.safetensors"), "input_ids").narrow(0, 0, 1);
        let opts = ForwardOptions::default();
        let logits = |ids: &Tensor, cache: Option<&mut KvCache>| tch::no_grad(|| loaded.model.forward(ids, None, &opts, cache).unwrap().logits.unwrap());
        let full = logits(&ids, None);
        let mut cache = KvCache::default();
        let first = logits(&ids.narrow(1, 0, 10), Some(&mut cache));
        let one = logits(&ids.narrow(1, 10, 1), Some(&mut cache));
        let rest = logits(&ids.narrow(1, 11, 6), Some(&mut cache));
        assert_eq!(cache.len(), 17);
        // Within 1e-5 of the largest logit: Gemma's reach 30 (its soft-cap).
        let scale = full.abs().max().double_value(&[]).max(1.0);
        assert_close(&Tensor::cat(&[first, one, rest], 1), &full, 1e-5 * scale, &format!("{dir}: cached vs whole"));
    }
}

#[test]
fn one_adamw_step_matches_pytorch() {
    // Llama: embeddings, final norm, head and 9 tensors per block; Gemma 3: tied, 13 per block.
    for (dir, step, compared) in [("llama-gqa", "llama_adamw_step", 3 + 2 * 9), ("gemma3-small", "gemma3_adamw_step", 2 + 3 * 13)] {
        let loaded = checkpoint::load(fixtures().join(dir), Device::Cpu).unwrap();
        let file = fixtures().join(format!("{step}.safetensors"));
        let ids = fixture_tensor(&file, "input_ids");
        let t = ids.size()[1];
        let logits = loaded.model.forward(&ids, None, &ForwardOptions { train: true, ..Default::default() }, None).unwrap().logits.unwrap();
        let loss = tchlab::train::lm_loss(&logits.narrow(1, 0, t - 1), &ids.narrow(1, 1, t - 1));
        let updated = common::adamw_step_like_pytorch(&loaded.model, loss, &file, 1e-3);
        assert_eq!(updated.len(), compared, "{dir}: the tensors compared");
        common::assert_updated_like(updated, &file, Some(1e-3));
    }
}

#[test]
fn what_tchlab_saves_transformers_loads_with_the_same_logits() {
    for dir in ["llama-gqa", "qwen3", "mistral", "gemma3-small", "neox", "neox-sequential", "phi3"] {
        let loaded = checkpoint::load(fixtures().join(dir), Device::Cpu).unwrap();
        // A change of the first block's queries, so that the save is not the file read.
        let variables = loaded.model.vars.variables();
        let queries =
            ["model.layers.0.self_attn.q_proj.weight", "gpt_neox.layers.0.attention.query_key_value.weight", "model.layers.0.self_attn.qkv_proj.weight"]
                .iter()
                .find_map(|n| variables.get(*n));
        let _ = tch::no_grad(|| queries.unwrap().shallow_clone().g_mul_scalar_(1.5));
        let out = common::scratch(&format!("save-{dir}"));
        checkpoint::save_hf(&loaded.model, None, &out).unwrap();
        let ids = Tensor::from_slice(&[5i64, 17, 3, 90, 12, 7]).unsqueeze(0);
        let logits = tch::no_grad(|| loaded.model.forward(&ids, None, &ForwardOptions::default(), None).unwrap().logits.unwrap());
        safetensors::write(&out.join("ours.safetensors"), &[("ids".into(), ids), ("logits".into(), logits)], &BTreeMap::new()).unwrap();
        let script = r#"
import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
d = sys.argv[1]
ours = load_file(d + "/ours.safetensors")
model = AutoModelForCausalLM.from_pretrained(d).eval()
with torch.no_grad():
    theirs = model(ours["ids"]).logits
diff = (theirs - ours["logits"]).abs().max().item()
assert diff < 1e-4, f"max difference {diff}"
"#;
        common::python_agrees(script, &out);
    }
}
