//! Tokens as people read them (`Tokenizer::readable`), over four kinds of vocabulary:
//! byte-level BPE (a GPT-2 tokenizer trained by the `tokenizers` package, and SmolLM2's
//! GGUF vocabulary), WordPiece (all-MiniLM-L6-v2) and a SentencePiece BPE with byte
//! fallback. The reference (`python/make_fixtures.py`) takes each token's bytes from the
//! Python tokenizer's own pieces — checked there against its decoding of the token alone —
//! and marks spaces, newlines, tabs, control characters and stray bytes.

mod common;

use serde_json::Value;
use tchlab::tokenize::Tokenizer;

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("readable_tokens.json")).unwrap()).unwrap()
}

fn tokenizer(case: &Value) -> Tokenizer {
    let path = std::path::Path::new(case["path"].as_str().unwrap());
    if path.extension().is_some_and(|e| e == "gguf") {
        Tokenizer::from_gguf(&tchlab::formats::gguf::read_metadata(path).unwrap(), 8192).unwrap()
    } else if path.is_dir() {
        Tokenizer::from_model_dir(path, 512).unwrap()
    } else {
        Tokenizer::from_file(path).unwrap()
    }
}

#[test]
fn every_kind_of_vocabulary_reads_as_its_bytes_with_marks() {
    for (name, case) in cases().as_object().unwrap() {
        let t = tokenizer(case);
        for entry in case["texts"].as_array().unwrap() {
            let tokens = entry["tokens"].as_array().unwrap();
            let ids: Vec<i64> = tokens.iter().map(|t| t["id"].as_i64().unwrap()).collect();
            let pieces: Vec<&str> = tokens.iter().map(|t| t["piece"].as_str().unwrap()).collect();
            let expected: Vec<&str> = tokens.iter().map(|t| t["readable"].as_str().unwrap()).collect();
            let text = entry["text"].as_str().unwrap();
            if case["kind"] != "wordpiece" {
                // WordPiece adds [CLS] and [SEP] around the text; the rest add nothing.
                assert_eq!(t.encode(text).unwrap(), ids, "{name}: ids of {text:?}");
            }
            assert_eq!(ids.iter().map(|&i| t.piece(i)).collect::<Vec<_>>(), pieces, "{name}: pieces of {text:?}");
            assert_eq!(t.readable_tokens(&ids), expected, "{name}: readable tokens of {text:?}");
        }
    }
}

#[test]
fn the_marks_are_the_ones_the_issue_names() {
    let cases = cases();
    let smollm2 = tokenizer(&cases["smollm2"]);
    let readable = |text: &str| smollm2.readable_tokens(&smollm2.encode(text).unwrap());
    assert_eq!(readable("the cat sat"), ["the", "␣cat", "␣sat"]);
    assert_eq!(readable("a\nb\tc"), ["a", "↵", "b", "⇥", "c"]);
    assert!(readable("🍕").join("").starts_with("\\xf0\\x9f"), "an emoji split across tokens shows its bytes");
    assert_eq!(smollm2.readable(smollm2.token_id("<|im_start|>").unwrap()), "<|im_start|>", "special tokens as written");
    assert_eq!(smollm2.readable(1 << 40), "#1099511627776", "an id past the vocabulary is named, not a panic");
    let sp = tokenizer(&cases["sp-byte-fallback"]);
    assert_eq!(sp.readable(sp.token_id("<0x0A>").unwrap()), "↵", "a byte-fallback newline");
    assert_eq!(sp.readable(sp.token_id("<0xE6>").unwrap()), "\\xe6", "half a character");
    let char_level = Tokenizer::char_level("a b\u{7}").unwrap();
    assert_eq!(char_level.readable_tokens(&char_level.encode("a b\u{7}").unwrap()), ["a", "␣", "b", "\\x07"]);
}
