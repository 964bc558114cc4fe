//! GPU paths. These need a CUDA GPU: `make test` runs them (`--ignored`) where
//! `nvidia-smi` finds one and reports them skipped, by name, where it does not.

use tch::{Device, Kind};
use tchlab::data::DataSpec;
use tchlab::models::gpt::GptConfig;
use tchlab::models::Model;
use tchlab::train::{HParams, Stop, Trainer};

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_is_available() {
    // libtorch_cuda is not linked: tchlab::cuda opens it, before any other CUDA query.
    assert!(tchlab::cuda::is_available(), "this machine has a GPU but libtorch's CUDA did not load or found no device");
    assert!(tchlab::cuda::device_count() >= 1);
}

/// A tiny GPT on the reverse task, trained on `cuda:0` at `precision`; returns the
/// first and last losses.
fn train_on_cuda(precision: &str) -> (f64, f64) {
    let task = tchlab::data::synth::Synth::new(tchlab::data::synth::Task::Reverse, 6, 10).unwrap();
    let tokenizer = task.tokenizer();
    let model =
        Model::new(GptConfig::tiny(tokenizer.vocab_size() as i64, task.example_len() as i64), tchlab::models::Task::LanguageModel, Device::Cuda(0)).unwrap();
    let spec = DataSpec::Synth { task: "reverse".into(), length: 6, symbols: 10, seq2seq: false };
    let mut trainer = Trainer::new(model, tokenizer, spec, HParams { lr: 3e-3, batch: 64, ..Default::default() }, 0).unwrap();
    trainer.set("precision", precision).unwrap();
    let kind = trainer.model().named_tensors()[0].1.kind();
    assert_eq!(kind, trainer.hparams().precision.kind());
    let mut losses = vec![];
    let report = trainer.train(Stop::Steps(150), &mut |s, _| losses.push(s.loss)).unwrap();
    assert_eq!(report.halted, None);
    (losses[0], *losses.last().unwrap())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_tiny_gpt_trains_on_cuda_in_f32_bf16_and_f16() {
    for precision in ["f32", "bf16", "f16"] {
        let (first, last) = train_on_cuda(precision);
        assert!(last < first / 4.0, "{precision}: loss fell from {first} to {last}");
    }
    assert_eq!(tch::Tensor::zeros([1], (Kind::Float, Device::Cuda(0))).device(), Device::Cuda(0));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_terminal_session_starts_on_cuda() {
    // The binaries open CUDA at run time; a session on a GPU machine must start there.
    let binary = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/tchlab");
    let out = std::process::Command::new(binary).args(["-c", "%device", "--json"]).output().expect("run target/release/tchlab");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON result");
    assert_eq!(result["device"], "cuda:0", "{result}");
    assert_eq!(result["cuda_available"], true);
}
