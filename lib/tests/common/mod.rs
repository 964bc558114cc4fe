//! Helpers shared by the integration tests: where the reference fixtures are, and
//! numeric comparison with a readable failure.

#![allow(dead_code)] // each test binary uses a different subset

pub mod seq2seq;

use std::path::PathBuf;

use serde_json::Value;
use tch::{Kind, Tensor};
use tchlab::session::output::{CellError, Output};
use tchlab::session::Session;

/// The fixtures made by `python/make_fixtures.py` (`make test` makes them and sets
/// TCHLAB_FIXTURES).
pub fn fixtures() -> PathBuf {
    let dir =
        std::env::var_os("TCHLAB_FIXTURES").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/fixtures")));
    assert!(dir.join("READY").exists(), "no reference fixtures in {}: run `make test` (it runs python/make_fixtures.py first)", dir.display());
    dir
}

/// The Python of the project's virtual environment, for tests that ask the reference
/// implementation about files tchlab wrote.
pub fn python() -> PathBuf {
    std::env::var_os("TCHLAB_PYTHON").map(PathBuf::from).expect("TCHLAB_PYTHON is not set: run the tests through `make test`")
}

/// Runs `script` in the reference Python with `dir` as argv[1]; it asserts what it checks.
pub fn python_agrees(script: &str, dir: &std::path::Path) {
    let out = std::process::Command::new(python()).arg("-c").arg(script).arg(dir).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(out.status.success(), "transformers disagrees:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// Asserts `|a - b| <= tol` elementwise, naming what was compared.
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    let diff = max_abs_diff(a, b);
    assert!(diff <= tol, "{what}: max |difference| {diff:e} exceeds {tol:e}");
}

/// A fresh empty directory under the system's temporary directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tchlab-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Reads one tensor from a `.safetensors` fixture.
pub fn fixture_tensor(file: &std::path::Path, name: &str) -> Tensor {
    tchlab::checkpoint::read_file(file).unwrap().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{} has no tensor {name}", file.display())).1
}

/// A language model called as the parity tests call it: ids, options, an optional cache.
pub struct Lm<'a>(pub &'a tchlab::models::Model);

/// What [`Lm::forward`] returns.
pub struct LmOutput {
    /// `(B, T, vocab)`.
    pub logits: Tensor,
    /// Per layer, when captured.
    pub attentions: Option<Vec<Tensor>>,
}

impl Lm<'_> {
    /// The model's forward pass without a padding mask.
    pub fn forward(&self, ids: &Tensor, opts: &tchlab::models::ForwardOptions, cache: Option<&mut tchlab::models::KvCache>) -> tchlab::Result<LmOutput> {
        let out = self.0.forward(ids, None, opts, cache)?;
        Ok(LmOutput { logits: out.logits.expect("a language model has logits"), attentions: out.attentions })
    }
}

/// Compares every weight of `updated` (Hugging Face names and layout) with
/// `updated.NAME` in `file`, relative to the reference's largest magnitude (< 1e-5).
///
/// With `adam_lr`, elements whose reference gradient (`grad.NAME`) is at float32 noise
/// level — below 1e-5 of the largest in its tensor, such as attention key biases, whose
/// true gradient is zero because softmax ignores what they add — are held only to
/// twice the learning rate: Adam divides a gradient by its own magnitude, so noise in
/// either implementation becomes a step of up to `lr` in a sign nobody chose.
pub fn assert_updated_like(updated: Vec<(String, Tensor)>, file: &std::path::Path, adam_lr: Option<f64>) {
    for (name, ours) in updated {
        let theirs = fixture_tensor(file, &format!("updated.{name}"));
        let scale = theirs.abs().max().double_value(&[]).max(1e-12);
        let diff = (ours.to_kind(Kind::Double) - theirs.to_kind(Kind::Double)).abs();
        let diff = match adam_lr {
            Some(lr) => {
                let grad = fixture_tensor(file, &format!("grad.{name}")).abs().to_kind(Kind::Double);
                let noise = grad.le(1e-5 * grad.max().double_value(&[]));
                let noisy_gap = diff.masked_fill(&noise.logical_not(), 0.0).max().double_value(&[]);
                assert!(noisy_gap <= 2.0 * lr, "{name}: an element with a noise-level gradient moved by {noisy_gap}, more than Adam's step bound");
                diff.masked_fill(&noise, 0.0)
            }
            None => diff,
        };
        let relative = diff.max().double_value(&[]) / scale;
        assert!(relative < 1e-5, "{name}: relative difference {relative:e}");
    }
}

/// Checks `loss` against the PyTorch fixture `file`, takes one AdamW step from it (`lr`,
/// weight decay 0.1 on matrices, as the fixture's), and returns the model's weights after
/// it under their Hugging Face names, for [`assert_updated_like`].
pub fn adamw_step_like_pytorch(model: &tchlab::models::Model, loss: Tensor, file: &std::path::Path, lr: f64) -> Vec<(String, Tensor)> {
    use tchlab::train::optim::{Method, Optimizer};
    let reference = fixture_tensor(file, "loss").double_value(&[0]);
    let relative = (loss.double_value(&[]) - reference).abs() / reference.abs();
    assert!(relative < 1e-5, "loss {} vs PyTorch {reference}", loss.double_value(&[]));
    let mut opt = Optimizer::new(&model.vars, Method::adamw(), lr, 0.1).unwrap();
    opt.zero_grad();
    loss.backward();
    opt.step().unwrap();
    tchlab::checkpoint::hf_state_dict(model).unwrap()
}

// ---- sessions: cells as a notebook sends them ----

/// Runs a cell, returning its outputs and its result.
pub fn run(s: &mut Session, cell: &str) -> (Vec<Output>, Result<(), CellError>) {
    let mut outputs = vec![];
    let result = s.run_cell(cell, &mut |o| outputs.push(o));
    (outputs, result)
}

/// Runs a cell that must succeed and returns its result's JSON (`Null` when it has none).
pub fn ok(s: &mut Session, cell: &str) -> Value {
    let (outputs, result) = run(s, cell);
    if let Err(e) = result {
        panic!("{cell}: {e}");
    }
    result_json(&outputs)
}

/// The JSON of the last result among `outputs` (`Null` when none).
pub fn result_json(outputs: &[Output]) -> Value {
    outputs.iter().rev().find_map(|o| if let Output::Result(b) = o { b.data().cloned() } else { None }).unwrap_or(Value::Null)
}

/// Runs a cell that must fail and returns its error.
pub fn fail(s: &mut Session, cell: &str) -> CellError {
    match run(s, cell).1 {
        Ok(()) => panic!("{cell} should fail"),
        Err(e) => e,
    }
}

/// One session at a time in a test binary.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    // libtorch's random generator is one per process: sessions that must reproduce
    // numbers take turns, as one front end runs one command at a time.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
