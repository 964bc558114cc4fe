//! Helpers shared by the integration tests: where the reference fixtures are, and
//! numeric comparison with a readable failure.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;

use tch::{Kind, Tensor};

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
