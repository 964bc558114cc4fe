//! GPU paths. These need a CUDA GPU: `make test` runs them (`--ignored`) where
//! `nvidia-smi` finds one and reports them skipped, by name, where it does not.

use tch::{Device, Kind};
use tchlab::data::synth::{Synth, Task};
use tchlab::models::gpt::GptConfig;
use tchlab::models::{ForwardOptions, Model, Network};
use tchlab::train::{lm_loss, optim};

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_is_available() {
    assert!(tch::Cuda::is_available(), "libtorch_cuda is linked but CUDA is not available");
    assert!(tch::Cuda::device_count() >= 1);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_tiny_gpt_trains_on_cuda_in_bf16() {
    let device = Device::Cuda(0);
    let task = Synth::new(Task::Reverse, 6, 10).unwrap();
    let mut rng = tchlab::data::Rng::new(0);
    let tokenizer = task.tokenizer();
    let mut model = Model::gpt(&GptConfig::tiny(tokenizer.vocab_size() as i64, task.example_len() as i64), device).unwrap();
    model.set_kind(Kind::BFloat16);
    let Network::Gpt(gpt) = &model.network else { unreachable!() };
    let mut opt = optim::Optimizer::new(&model.vars, optim::Method::adamw(), 3e-3, 0.0).unwrap();
    let mut losses = vec![];
    for _ in 0..150 {
        let (x, y) = task.batch(64, &tokenizer, &mut rng).unwrap();
        let logits = gpt.forward(&x.to_device(device), &ForwardOptions { train: true, ..Default::default() }, None).unwrap().logits;
        assert_eq!(logits.kind(), Kind::BFloat16);
        let loss = lm_loss(&logits, &y.to_device(device));
        opt.zero_grad();
        loss.backward();
        opt.step().unwrap();
        losses.push(loss.double_value(&[]));
    }
    assert!(losses[149] < losses[0] / 4.0, "loss fell from {} to {}", losses[0], losses[149]);
}
