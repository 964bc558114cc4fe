//! all-MiniLM-L6-v2 parity with sentence-transformers: token ids over varied text
//! (unicode, emoji, empty, past the length limit) and normalised mean-pooled
//! embeddings.

mod common;

use common::{assert_close, fixture_tensor, fixtures};
use tch::Device;
use tchlab::checkpoint;
use tchlab::embedding::{embed, Pooling, PoolingMode};

fn reference() -> (std::path::PathBuf, Vec<String>, Vec<Vec<i64>>) {
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("minilm.json")).unwrap()).unwrap();
    let dir = json["model_dir"].as_str().unwrap().into();
    let sentences = json["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    let ids = json["ids"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|i| i.as_i64().unwrap()).collect()).collect();
    (dir, sentences, ids)
}

#[test]
fn token_ids_match_sentence_transformers() {
    let (dir, sentences, expected) = reference();
    let loaded = checkpoint::load(&dir, Device::Cpu).unwrap();
    let tokenizer = loaded.tokenizer.expect("the model directory has tokenizer.json");
    assert_eq!(tokenizer.max_length(), Some(256), "sentence_bert_config.json's max_seq_length wins");
    for (sentence, expected) in sentences.iter().zip(&expected) {
        assert_eq!(&tokenizer.encode(sentence).unwrap(), expected, "ids of {sentence:?}");
    }
    assert_eq!(expected.last().unwrap().len(), 256, "the long text was truncated by the reference too");
}

#[test]
fn embeddings_match_sentence_transformers() {
    let (dir, sentences, _) = reference();
    let loaded = checkpoint::load(&dir, Device::Cpu).unwrap();
    let pooling = loaded.pooling.expect("modules.json names a Pooling module");
    assert_eq!(pooling, Pooling { mode: PoolingMode::Mean, normalize: true });
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let ours = embed(&loaded.model, loaded.tokenizer.as_ref().unwrap(), pooling, &texts).unwrap();
    let theirs = fixture_tensor(&fixtures().join("minilm.safetensors"), "embeddings");
    assert_close(&ours, &theirs, 1e-4, "sentence embeddings");
}

#[test]
fn bert_attention_is_captured_per_layer_and_ignores_padding() {
    let (dir, _, _) = reference();
    let loaded = checkpoint::load(&dir, Device::Cpu).unwrap();
    let tokenizer = loaded.tokenizer.unwrap();
    let ids = [tokenizer.encode("the cat sat").unwrap(), tokenizer.encode("a").unwrap()];
    let (ids, mask) = tchlab::embedding::pad_batch(&ids, 0);
    let opts = tchlab::models::ForwardOptions { capture_attention: true, ..Default::default() };
    let out = tch::no_grad(|| loaded.model.forward(&ids, Some(&mask), &opts, None).unwrap());
    let attentions = out.attentions.unwrap();
    assert_eq!(attentions.len(), 6);
    assert_eq!(attentions[0].size(), vec![2, 12, 5, 5]);
    // The second sentence has 3 real tokens: its queries give the 2 padding keys no weight.
    let to_padding = attentions[0].get(1).narrow(-1, 3, 2).abs().max().double_value(&[]);
    assert!(to_padding < 1e-6, "attention to padding {to_padding}");
}
