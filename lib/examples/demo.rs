//! A tiny GPT learns to reverse strings of digits on the CPU in a few seconds,
//! printing its loss as it goes, then completes prompts it has never seen.
//!
//! Run with `make demo` (or `cargo run --release --example demo`).

use tchlab::data::synth::{Synth, Task};
use tchlab::data::{DataSpec, Rng};
use tchlab::generate::{generate, GenerateOptions};
use tchlab::models::gpt::GptConfig;
use tchlab::models::Model;
use tchlab::train::{HParams, Stop, Trainer};

fn main() -> tchlab::Result<()> {
    tch::manual_seed(0);
    let task = Synth::new(Task::Reverse, 6, 10)?;
    let tokenizer = task.tokenizer();
    let config = GptConfig { n_embd: 64, n_layer: 2, n_head: 4, ..GptConfig::tiny(tokenizer.vocab_size() as i64, task.example_len() as i64) };
    let model = Model::gpt(&config, tch::Device::Cpu)?;
    println!("tiny GPT: {} parameters; task: reverse 6 digits, e.g. {:?}", model.num_parameters(), task.example(&mut Rng::new(1)));
    let spec = DataSpec::Synth { task: "reverse".into(), length: 6, symbols: 10 };
    let hp = HParams { lr: 3e-3, batch: 64, warmup: 20, eval_every: 100, ..Default::default() };
    let mut trainer = Trainer::new(model, tokenizer.clone(), spec, hp, 0)?;
    trainer.train(Stop::Steps(300), &mut |s, _| {
        if s.step % 25 == 0 || s.step == 1 {
            let val = s.val.as_ref().map(|v| format!("  val loss {:.4}", v.loss)).unwrap_or_default();
            println!("step {:>3}  loss {:.4}  lr {:.2e}  {:>8.0} tok/s{val}", s.step, s.loss, s.lr, s.tokens_per_s);
        }
    })?;
    println!("trained in {:.1}s", trainer.history().steps.last().map_or(0.0, |s| s.wall_time));
    let mut unseen = Rng::new(12345);
    for _ in 0..3 {
        let (prompt, answer) = task.example(&mut unseen);
        let ids = tokenizer.encode(&prompt)?;
        let out = generate(trainer.model(), &ids, &GenerateOptions { max_new_tokens: answer.len(), ..Default::default() })?;
        let text = tokenizer.decode(&out)?;
        println!("{prompt}{text}  ({})", if text == answer { "right" } else { "wrong" });
    }
    Ok(())
}
