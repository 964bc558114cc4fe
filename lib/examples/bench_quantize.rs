//! SmolLM2-135M-Instruct quantised, for `make bench` (python/bench.py runs llama.cpp and
//! PyTorch's `quantize_dynamic` beside it): for one format (f32, fp16, int8, int4), the
//! time to load the GGUF file and quantise, the resident memory at its peak, prefill
//! tokens/s of a 32-token prompt, greedy decoding tokens/s over 128 tokens, and the
//! perplexity of a held-out text (its first 512 tokens, one forward pass). `int4-float-head`
//! is int4 with the LM head kept in float (`%quantize int4 --skip lm_head`), as llama.cpp's
//! 4-bit files keep their output layer in more bits.
//!
//! Usage: `bench_quantize FILE.gguf f32|fp16|int8|int4|int4-float-head TEXT_FILE`; prints
//! one JSON line with the ids it used, so that the peers run the same.

use std::time::Instant;

use tch::{Kind, Tensor};
use tchlab::generate::{generate, GenerateOptions};
use tchlab::models::lora::Targets;
use tchlab::models::quantize::{Format, Plan};
use tchlab::models::ForwardOptions;

fn main() -> tchlab::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, format, text] = args.as_slice() else { panic!("usage: bench_quantize FILE.gguf f32|fp16|int8|int4|int4-float-head TEXT_FILE") };
    let plan = match format.as_str() {
        "f32" => None,
        "fp16" => Some(Plan { format: Format::Fp16, skip: None }),
        "int8" => Some(Plan { format: Format::Int8, skip: None }),
        "int4" => Some(Plan { format: Format::Int4 { group: 32 }, skip: None }),
        "int4-float-head" => Some(Plan { format: Format::Int4 { group: 32 }, skip: Some(Targets::Names(vec!["lm_head".into()])) }),
        other => panic!("unknown format {other}"),
    };
    let started = Instant::now();
    let mut loaded = tchlab::checkpoint::load(path, tch::Device::Cpu)?;
    if let Some(plan) = plan {
        loaded.model.quantize(&plan)?;
    }
    let load_s = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(text).expect("the held-out text");
    let held_out: Vec<i64> = loaded.tokenizer.as_ref().expect("a tokenizer").encode(&text)?.into_iter().take(512).collect();
    let model = &loaded.model;
    let forward = |ids: &[i64]| tch::no_grad(|| model.forward(&Tensor::from_slice(ids).unsqueeze(0), None, &ForwardOptions::default(), None));

    let logits = forward(&held_out)?.logits.expect("a language model").squeeze_dim(0).to_kind(Kind::Float);
    let n = held_out.len() as i64;
    let loss = logits.narrow(0, 0, n - 1).cross_entropy_for_logits(&Tensor::from_slice(&held_out[1..])).double_value(&[]);

    let prompt = &held_out[..32];
    forward(prompt)?; // warm-up
    let runs = 10;
    let started = Instant::now();
    for _ in 0..runs {
        forward(prompt)?;
    }
    let prefill_tokens_per_s = f64::from(runs) * prompt.len() as f64 / started.elapsed().as_secs_f64();
    let opts = GenerateOptions { max_new_tokens: 128, ..Default::default() };
    generate(model, prompt, &GenerateOptions { max_new_tokens: 8, ..opts.clone() })?; // warm-up
    let started = Instant::now();
    let generated = generate(model, prompt, &opts)?;
    let generate_tokens_per_s = generated.len() as f64 / started.elapsed().as_secs_f64();
    let peak_rss_mb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0);
    println!(
        "{}",
        serde_json::json!({
            "load_s": load_s, "peak_rss_mb": peak_rss_mb, "prefill_tokens_per_s": prefill_tokens_per_s,
            "generate_tokens_per_s": generate_tokens_per_s, "perplexity": loss.exp(), "held_out_ids": held_out, "generated_ids": generated,
        })
    );
    Ok(())
}
