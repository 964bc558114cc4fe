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

/// T5's tokenizer as the hub stores it: transformers' `T5TokenizerFast` converts a
/// SentencePiece Unigram model (trained here by `sentencepiece`) into a `tokenizer.json`
/// with the model's precompiled normalisation map, its whitespace rules and the `</s>`
/// post-processor. tchlab reads that file and gives transformers' ids and text back.
#[test]
fn a_t5_sentencepiece_unigram_tokenizer_json_gives_transformers_ids() {
    let dir = common::scratch("t5-unigram");
    let texts = [
        "Hello world, the café in 東京 ran quickly!",
        "  leading and trailing spaces   and   runs of them  ",
        "ﬁne ＡＢＣ full-width and ligatures ½",
        "naïve über straße: summer, winter 42!",
        "emoji 🍕 and tabs\tand\nnewlines",
        "",
    ];
    std::fs::write(dir.join("texts.json"), serde_json::to_string(&texts).unwrap()).unwrap();
    let script = r#"
import json, random, sys
import sentencepiece as spm
from transformers import T5TokenizerFast
d = sys.argv[1]
random.seed(0)
words = ("the a of to and in is was for on that with as by at from it he she they one two three house river town king queen ran "
         "walked quickly slowly summer winter café naïve über straße 東京 running runner happy happily hello world fine abc").split()
with open(d + "/corpus.txt", "w") as f:
    for i in range(3000):
        f.write(" ".join(random.choice(words) for _ in range(random.randint(3, 12))) + (". " if i % 3 else ", 42!") + "\n")
spm.SentencePieceTrainer.train(input=d + "/corpus.txt", model_prefix=d + "/spiece", vocab_size=120, model_type="unigram", pad_id=0, eos_id=1,
                               unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
tokenizer = T5TokenizerFast(vocab_file=d + "/spiece.model", extra_ids=0)
tokenizer.save_pretrained(d + "/tokenizer")
texts = json.load(open(d + "/texts.json"))
expected = [{"ids": tokenizer(t).input_ids, "text": tokenizer.decode(tokenizer(t).input_ids, skip_special_tokens=True)} for t in texts]
json.dump(expected, open(d + "/expected.json", "w"))
"#;
    common::python_agrees(script, &dir);
    let config = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(dir.join("tokenizer/tokenizer.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["type"], "Unigram");
    let tokenizer = Tokenizer::from_model_dir(&dir.join("tokenizer"), 512).unwrap();
    let expected: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    for (text, want) in texts.iter().zip(expected) {
        let ids = tokenizer.encode(text).unwrap();
        let want_ids: Vec<i64> = serde_json::from_value(want["ids"].clone()).unwrap();
        assert_eq!(ids, want_ids, "{text:?}");
        assert_eq!(ids.last(), Some(&1), "T5 appends </s>");
        assert_eq!(tokenizer.decode(&ids[..ids.len() - 1]).unwrap(), want["text"].as_str().unwrap(), "{text:?} decoded");
    }
}
