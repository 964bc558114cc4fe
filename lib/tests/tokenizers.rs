//! Tokenizers against Hugging Face `tokenizers` (Python): a byte-level BPE trained by
//! tchlab encodes every text exactly as the Python library encodes it from the saved
//! `tokenizer.json`, and decodes back to the text; SentencePiece vocabularies in GGUF files
//! give llama.cpp's ids.

mod common;

use std::process::Command;

use tchlab::tokenize::{Tokenizer, END_OF_TEXT};

const TEXTS: [&str; 5] = ["the quick brown fox", "Jumps over the lazy dog!", "naïve café — déjà vu", "emoji 🍕🚀 and tabs\tand\nnewlines", ""];

#[test]
fn trained_bpe_matches_python_tokenizers_and_round_trips() {
    let dir = common::scratch("bpe");
    let corpus: String = (0..400).map(|i| format!("the quick brown fox {i} jumps over the lazy dog; naïve café {}\n", i * 7)).collect();
    std::fs::write(dir.join("corpus.txt"), corpus).unwrap();
    let tokenizer = Tokenizer::train_bpe(dir.join("corpus.txt"), 300).unwrap();
    assert!(tokenizer.vocab_size() <= 300 && tokenizer.vocab_size() > 256, "vocab {}", tokenizer.vocab_size());
    assert!(tokenizer.token_id(END_OF_TEXT).is_some());
    tokenizer.save(&dir.join("tokenizer.json")).unwrap();

    let ours: Vec<Vec<i64>> = TEXTS.iter().map(|t| tokenizer.encode(t).unwrap()).collect();
    for (text, ids) in TEXTS.iter().zip(&ours) {
        assert_eq!(&tokenizer.decode(ids).unwrap(), text, "byte-level BPE decodes back to the text");
    }
    assert!(ours[0].len() < TEXTS[0].len(), "merges were learnt: {:?}", ours[0]);

    let script = r#"
import json, sys
from tokenizers import Tokenizer
t = Tokenizer.from_file(sys.argv[1] + "/tokenizer.json")
print(json.dumps([t.encode(s).ids for s in json.loads(sys.argv[2])]))
"#;
    let out = Command::new(common::python()).args(["-c", script, dir.to_str().unwrap(), &serde_json::to_string(&TEXTS).unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<Vec<i64>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn bpe_training_errors_name_the_problem() {
    let err = Tokenizer::train_bpe("/nonexistent/corpus.txt", 300).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/corpus.txt"), "{err}");
    let dir = common::scratch("bpe-small");
    std::fs::write(dir.join("c.txt"), "abc").unwrap();
    let err = Tokenizer::train_bpe(dir.join("c.txt"), 100).err().unwrap().to_string();
    assert!(err.contains("--vocab 100"), "{err}");
}

#[test]
fn sentencepiece_gguf_vocabularies_give_llama_cpps_ids() {
    // Scores order the merges, characters outside the vocabulary fall back to bytes, the
    // control and user-defined tokens are matched whole, and llama.cpp's space prefix
    // goes before the text and after each of them unless the file turns it off.
    let dir = common::fixtures().join("sp-gguf");
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("llama_cpp_ids.json")).unwrap()).unwrap();
    let texts: Vec<String> = serde_json::from_value(reference["texts"].clone()).unwrap();
    for name in ["prefix", "no-prefix"] {
        let meta = tchlab::formats::gguf::read_metadata(&dir.join(format!("{name}.gguf"))).unwrap();
        let tokenizer = Tokenizer::from_gguf(&meta, 256).unwrap();
        let expected: Vec<Vec<i64>> = serde_json::from_value(reference[name].clone()).unwrap();
        for (text, ids) in texts.iter().zip(&expected) {
            assert_eq!(&tokenizer.encode(text).unwrap(), ids, "{name}: ids of {text:?}");
            if !text.contains('<') {
                assert_eq!(&tokenizer.decode(ids).unwrap(), text, "{name}: decoding {text:?}");
            }
        }
    }
}
