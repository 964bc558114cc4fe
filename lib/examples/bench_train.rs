//! Training-step timing of tchlab's Trainer for `make bench` (python/bench.py runs it
//! beside PyTorch and prints the comparison). Prints one JSON line per configuration.
//!
//! Usage: `bench_train LAYERS HEADS DIM CTX BATCH STEPS` (vocab 512, dropout 0, AdamW,
//! clip 1.0, f32), on the CPU unless `TCHLAB_BENCH_DEVICE=cuda`.

use std::time::Instant;

use tchlab::data::{DataSpec, Rng};
use tchlab::models::gpt::GptConfig;
use tchlab::models::Model;
use tchlab::tokenize::Tokenizer;
use tchlab::train::{HParams, Stop, Trainer};

const VOCAB: usize = 512;
const WARMUP_STEPS: u64 = 3;

fn main() -> tchlab::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let [layers, heads, dim, ctx, batch, steps] = args[..] else {
        eprintln!("usage: bench_train LAYERS HEADS DIM CTX BATCH STEPS");
        std::process::exit(2);
    };
    let device = if std::env::var("TCHLAB_BENCH_DEVICE").as_deref() == Ok("cuda") { tch::Device::Cuda(0) } else { tch::Device::Cpu };
    // A corpus of random characters from a 512-letter alphabet: a character tokenizer
    // then has exactly the benchmark's vocabulary, and the real data path is timed.
    let alphabet: Vec<char> = (0..VOCAB as u32).map(|i| char::from_u32(0x4E00 + i).expect("CJK block")).collect();
    let mut rng = Rng::new(0);
    let text: String = (0..200_000).map(|_| alphabet[rng.below(VOCAB as u64) as usize]).collect();
    let path = std::env::temp_dir().join(format!("tchlab-bench-{}.txt", std::process::id()));
    std::fs::write(&path, &text).map_err(|e| tchlab::Error::io(&path, e))?;
    let tokenizer = Tokenizer::char_level(&text)?;
    assert_eq!(tokenizer.vocab_size(), VOCAB);

    tch::manual_seed(0);
    let config = GptConfig { n_layer: layers as i64, n_head: heads as i64, n_embd: dim as i64, ..GptConfig::tiny(VOCAB as i64, ctx as i64) };
    let model = Model::new(config, tchlab::models::Task::LanguageModel, device)?;
    let params = model.num_parameters();
    let hp = HParams { lr: 1e-3, batch, clip: 1.0, weight_decay: 0.01, ..Default::default() };
    let mut trainer = Trainer::new(model, tokenizer, DataSpec::Text { path: path.clone(), val_fraction: 0.0 }, hp, 0)?;
    trainer.train(Stop::Steps(WARMUP_STEPS), &mut |_, _| {})?;
    let started = Instant::now();
    let mut last_loss = 0.0;
    trainer.train(Stop::Steps(steps as u64), &mut |s, _| last_loss = s.loss)?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    println!(
        "{}",
        serde_json::json!({
            "ms_per_step": 1000.0 * seconds / steps as f64,
            "tokens_per_s": (batch * ctx * steps) as f64 / seconds,
            "params": params,
            "loss": last_loss,
            "threads": tch::get_num_threads(),
        })
    );
    Ok(())
}
