//! Greedy generation speed for `make bench` (python/bench.py runs transformers'
//! `generate` beside it): a GPT-2-small-sized model (12 layers, 12 heads, width 768,
//! vocabulary 50257, random weights) continues a 16-token prompt by 64 tokens.

use std::time::Instant;

use tchlab::generate::{generate, GenerateOptions};
use tchlab::models::gpt::GptConfig;
use tchlab::models::Model;

fn main() -> tchlab::Result<()> {
    tch::manual_seed(0);
    let config = GptConfig { n_layer: 12, n_head: 12, n_embd: 768, ..GptConfig::tiny(50257, 1024) };
    let model = Model::new(config, tchlab::models::Task::LanguageModel, tch::Device::Cpu)?;
    let prompt: Vec<i64> = (0..16).map(|i| (i * 977) % 50257).collect();
    let opts = GenerateOptions { max_new_tokens: 64, ..Default::default() };
    generate(&model, &prompt, &GenerateOptions { max_new_tokens: 4, ..opts.clone() })?; // warm-up
    let runs = 3;
    let started = Instant::now();
    let mut tokens = 0;
    for _ in 0..runs {
        tokens += generate(&model, &prompt, &opts)?.len();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("{}", serde_json::json!({ "tokens_per_s": tokens as f64 / seconds, "parameters": model.num_parameters() }));
    Ok(())
}
