//! A tiny GPT learns to reverse strings of digits on the CPU in a few seconds,
//! printing its loss as it goes, then completes a few prompts greedily.
//!
//! Run with `make demo` (or `cargo run --release --example demo`).

use tchlab::data::synth::{Synth, Task};
use tchlab::generate::{generate, GenerateOptions};
use tchlab::models::gpt::GptConfig;
use tchlab::models::{ForwardOptions, Model, Network};
use tchlab::train::{lm_loss, optim};

fn main() -> tchlab::Result<()> {
    tch::manual_seed(0);
    let mut task = Synth::new(Task::Reverse, 6, 10, 0)?;
    let tokenizer = task.tokenizer();
    let config = GptConfig { n_embd: 64, n_layer: 2, n_head: 4, ..GptConfig::tiny(tokenizer.vocab_size() as i64, task.example_len() as i64) };
    let model = Model::gpt(&config, tch::Device::Cpu)?;
    let Network::Gpt(gpt) = &model.network else { unreachable!("built as GPT") };
    println!("tiny GPT: {} parameters, task: reverse 6 digits, e.g. {:?}", model.num_parameters(), task.example());
    let mut opt = optim::Optimizer::new(&model.vars, optim::Method::adamw(), 3e-3, 0.01)?;
    let train = ForwardOptions { train: true, ..Default::default() };
    let start = std::time::Instant::now();
    for step in 1..=300 {
        let (x, y) = task.batch(64, &tokenizer)?;
        let loss = lm_loss(&gpt.forward(&x, &train, None)?.logits, &y);
        opt.zero_grad();
        loss.backward();
        opt.step()?;
        if step % 25 == 0 || step == 1 {
            println!("step {step:>3}  loss {:.4}", loss.double_value(&[]));
        }
    }
    println!("trained in {:.1}s", start.elapsed().as_secs_f64());
    for _ in 0..3 {
        let (prompt, answer) = task.example();
        let ids = tokenizer.encode(&prompt)?;
        let out = generate(&model, &ids, &GenerateOptions { max_new_tokens: answer.len(), ..Default::default() })?;
        let text = tokenizer.decode(&out)?;
        println!("{prompt}{text}  ({})", if text == answer { "right" } else { "wrong" });
    }
    Ok(())
}
