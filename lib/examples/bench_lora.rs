//! One fine-tuning step of SmolLM2-135M-Instruct for `make bench` (python/bench.py runs
//! transformers + peft beside it on the same data): LoRA r=8, alpha 16, no dropout, on
//! q_proj and v_proj, or every weight (`full`), each also with gradient checkpointing
//! (`-checkpointing`); AdamW, float32, batch 4 × 128 tokens of fixed ids. Prints one
//! JSON line: the median step time over 5 steps after 2 warm-up steps, the trainable
//! parameters and the process's peak resident memory.
//!
//! Usage: `bench_lora FILE.gguf lora|full[-checkpointing]`.

use std::time::Instant;

use tch::{Kind, Tensor};
use tchlab::models::checkpointing::Backward;
use tchlab::models::lora::{Init, LoraConfig, Targets};
use tchlab::models::{ForwardOptions, Output};
use tchlab::train::optim::{Method, Optimizer};

const BATCH: i64 = 4;
const TOKENS: i64 = 128;

fn main() -> tchlab::Result<()> {
    let mut args = std::env::args().skip(1);
    let (path, mode) = (args.next().expect("usage: bench_lora FILE.gguf lora|full[-checkpointing]"), args.next().unwrap_or_else(|| "lora".into()));
    let mut model = tchlab::checkpoint::load(&path, tch::Device::Cpu)?.model;
    if mode.starts_with("lora") {
        let config = LoraConfig { r: 8, alpha: 16.0, dropout: 0.0, targets: Targets::Names(vec!["q_proj".into(), "v_proj".into()]), ..Default::default() };
        tch::manual_seed(0);
        model.add_lora(&config, Init::Default)?;
    }
    // The same ids python/bench.py makes: 0, 7, 14, ... modulo the vocabulary.
    let ids = Tensor::arange(BATCH * (TOKENS + 1), (Kind::Int64, tch::Device::Cpu)).f_mul_scalar(7)?.f_remainder(49152)?.view([BATCH, TOKENS + 1]);
    let (inputs, targets) = (ids.narrow(1, 0, TOKENS), ids.narrow(1, 1, TOKENS));
    let mut opt = Optimizer::new(&model.vars, Method::adamw(), 1e-4, 0.0)?;
    let backward = |out: &Output| -> tchlab::Result<()> { Ok(tchlab::train::lm_loss(out.logits.as_ref().expect("a language model"), &targets).f_backward()?) };
    let checkpoint = mode.ends_with("-checkpointing").then_some(Backward(&backward));
    let mut times = vec![];
    for step in 0..7 {
        let started = Instant::now();
        opt.zero_grad();
        let out = model.forward(&inputs, None, &ForwardOptions { train: true, checkpoint, ..Default::default() }, None)?;
        if checkpoint.is_none() {
            backward(&out)?;
        }
        opt.step()?;
        if step >= 2 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    let peak_kb: u64 = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    println!("{}", serde_json::json!({"ms_per_step": times[times.len() / 2], "trainable": model.num_trainable(), "peak_mb": peak_kb as f64 / 1024.0}));
    Ok(())
}
