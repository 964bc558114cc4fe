//! SmolLM2-135M-Instruct speed for `make bench` (python/bench.py runs transformers and
//! llama.cpp beside it): the time to load the GGUF file (dequantised to float32), prefill
//! tokens/s of a 32-token prompt, greedy generation of 128 new tokens, and the 32-token
//! forward pass without hooks, through hooks that match nothing, and caching every
//! hook point.
//!
//! Usage: `bench_smollm2 FILE.gguf`; prints one JSON line, the prompt ids included so
//! that the peers run the same prompt.

use std::time::Instant;

use tchlab::generate::{generate, GenerateOptions};
use tchlab::models::hooks::{Hooks, Names};
use tchlab::models::ForwardOptions;

const PROMPT: &str = "The history of astronomy is long: people have watched the sky for thousands of years, \
                      named the stars, followed the planets and predicted eclipses long before the first telescopes were built in Europe.";

fn main() -> tchlab::Result<()> {
    let path = std::env::args().nth(1).expect("usage: bench_smollm2 FILE.gguf");
    let mut load_seconds = f64::INFINITY;
    let mut loaded = None;
    for _ in 0..3 {
        let started = Instant::now();
        loaded = Some(tchlab::checkpoint::load(&path, tch::Device::Cpu)?);
        load_seconds = load_seconds.min(started.elapsed().as_secs_f64());
    }
    let loaded = loaded.expect("loaded three times");
    let ids: Vec<i64> = loaded.tokenizer.as_ref().expect("a tokenizer").encode(PROMPT)?.into_iter().take(32).collect();
    assert_eq!(ids.len(), 32, "the prompt is 32 tokens");
    let input = tch::Tensor::from_slice(&ids).unsqueeze(0);
    let prefill = |runs: u32| -> tchlab::Result<f64> {
        let started = Instant::now();
        for _ in 0..runs {
            tch::no_grad(|| loaded.model.forward(&input, None, &ForwardOptions::default(), None))?;
        }
        Ok(f64::from(runs) * ids.len() as f64 / started.elapsed().as_secs_f64())
    };
    prefill(2)?; // warm-up
    let prefill_tokens_per_s = prefill(10)?;
    let forward_ms = |hooks: &dyn Fn() -> Hooks| -> tchlab::Result<f64> {
        let runs = 10;
        let mut total = 0.0;
        for run in 0..runs + 2 {
            let hooks = hooks();
            let started = Instant::now();
            tch::no_grad(|| loaded.model.forward(&input, None, &ForwardOptions { hooks: Some(&hooks), ..Default::default() }, None))?;
            hooks.finish()?;
            if run >= 2 {
                total += started.elapsed().as_secs_f64();
            }
        }
        Ok(total / f64::from(runs) * 1000.0)
    };
    let hooked_ms = forward_ms(&|| Hooks::new())?;
    let cached_ms = forward_ms(&|| Hooks::new().cache(Names::all(), u64::MAX))?;
    let opts = GenerateOptions { max_new_tokens: 128, ..Default::default() };
    generate(&loaded.model, &ids, &GenerateOptions { max_new_tokens: 8, ..opts.clone() })?; // warm-up
    let started = Instant::now();
    let generated = generate(&loaded.model, &ids, &opts)?;
    let generate_tokens_per_s = generated.len() as f64 / started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "load_s": load_seconds, "prefill_tokens_per_s": prefill_tokens_per_s, "generate_tokens_per_s": generate_tokens_per_s,
            "forward_ms": 1000.0 * ids.len() as f64 / prefill_tokens_per_s, "forward_hooks_ms": hooked_ms, "forward_cache_all_ms": cached_ms,
            "prompt_ids": ids, "generated_ids": generated,
        })
    );
    Ok(())
}
