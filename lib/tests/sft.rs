//! `%data chat` against TRL: conversations and prompt–completion pairs in TRL's formats,
//! tokenised with SmolLM2's tokenizer from its GGUF file, give the ids and labels TRL's
//! SFT preprocessing gives (`python/make_fixtures.py`, `make_sft`). For conversations TRL
//! marks the assistant's tokens through a template with `{% generation %}` blocks,
//! which SmolLM2's own has not: the fixture gives TRL SmolLM2's template with the
//! blocks added (the same text rendered), while tchlab renders with SmolLM2's own and
//! finds each reply by rendering the conversation up to it (`data/chat.rs`). Equal
//! labels mean the two rules mark the same tokens.

mod common;

use std::collections::BTreeMap;

use serde_json::Value;
use tchlab::chat::Template;
use tchlab::data::chat::{ChatData, Reading, IGNORE};
use tchlab::formats::gguf;
use tchlab::tokenize::Tokenizer;

fn smollm2() -> (Tokenizer, Template) {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("smollm2.json")).unwrap()).unwrap();
    let meta = gguf::read_metadata(std::path::Path::new(reference["file"].as_str().unwrap())).unwrap();
    let template =
        Template { source: meta.string("tokenizer.chat_template").unwrap().to_string(), bos_token: "<|im_start|>".into(), eos_token: "<|im_end|>".into() };
    (Tokenizer::from_gguf(&meta, 8192).unwrap(), template)
}

fn read(name: &str, all_tokens: bool, max_len: usize) -> tchlab::Result<ChatData> {
    let (tokenizer, template) = smollm2();
    let reading = Reading { tokenizer: &tokenizer, template: Some(&template), eos: Some("<|im_end|>".into()), all_tokens, max_len, pad_id: 2 };
    ChatData::from_file(&common::fixtures().join("sft").join(format!("{name}.jsonl")), &reading, 0.0, 0)
}

#[test]
fn ids_and_labels_equal_trls_sft_preprocessing_in_every_format() {
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("sft").join("expected.json")).unwrap()).unwrap();
    for (name, rows) in expected.as_object().unwrap() {
        let data = read(name, false, 8192).unwrap();
        let ours: BTreeMap<Vec<i64>, Vec<i64>> = data.examples().0.iter().map(|e| (e.ids.clone(), e.labels.clone())).collect();
        assert_eq!(ours.len(), rows.as_array().unwrap().len(), "{name}: every example read");
        for row in rows.as_array().unwrap() {
            let ids: Vec<i64> = serde_json::from_value(row["input_ids"].clone()).unwrap();
            let labels: Vec<i64> = serde_json::from_value(row["labels"].clone()).unwrap();
            let Some(mine) = ours.get(&ids) else { panic!("{name}: TRL's ids {ids:?} are not among tchlab's {:?}", ours.keys().collect::<Vec<_>>()) };
            assert_eq!(mine, &labels, "{name}: labels of {ids:?}");
        }
    }
}

#[test]
fn each_reply_learns_its_end_of_turn_token_and_the_example_shows_what_is_learned() {
    let data = read("messages", false, 8192).unwrap();
    let im_end = 2;
    for e in data.examples().0 {
        let trained: Vec<i64> = e.labels.iter().copied().filter(|&l| l != IGNORE).collect();
        assert!(trained.contains(&im_end), "a reply's <|im_end|> carries loss, so the model learns to stop");
    }
    let shown = data.shown.as_ref().unwrap();
    assert!(shown.text.starts_with("<|im_start|>"), "{}", shown.text);
    for &(start, end) in &shown.trained {
        let marked = &shown.text[start..end];
        assert!(marked.ends_with("<|im_end|>\n"), "each marked stretch is a reply to its end of turn: {marked:?}");
        assert!(!marked.contains("<|im_start|>"), "{marked:?}");
    }
}

#[test]
fn all_tokens_truncation_and_padding() {
    let all = read("messages", true, 8192).unwrap();
    assert!(all.examples().0.iter().all(|e| e.labels == e.ids), "--all-tokens: every label is its id");
    let cut = read("messages", false, 40).unwrap();
    assert_eq!(cut.truncated, 2, "two conversations are longer than 40 tokens");
    assert!(cut.examples().0.iter().all(|e| e.ids.len() <= 40));
    let tiny = read("messages", false, 20);
    let e = tiny.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("no example has a token to learn"), "every reply cut away: {e}");
    let mut rng = tchlab::data::Rng::new(1);
    let (x, y) = all.batch(3, 8192, &mut rng).unwrap();
    assert_eq!(x.size(), y.size());
    let (ys, xs): (Vec<i64>, Vec<i64>) = (Vec::try_from(y.flatten(0, -1)).unwrap(), Vec::try_from(x.flatten(0, -1)).unwrap());
    for (&input, &target) in xs.iter().zip(&ys) {
        assert!(target != IGNORE || input == 2, "padding (the pad id) carries no loss");
    }
}
