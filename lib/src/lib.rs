//! tchlab: a libtorch transformer library for interactive labs.
//!
//! - [`models`]: the registry of model families (GPT-2, BERT, Llama/Qwen2/Qwen3/Mistral,
//!   Gemma 3, GPT-NeoX, Phi-3, T5),
//!   configured from `config.json`, built from shared layers, with TransformerLens's
//!   hook points.
//! - [`formats`]: the file formats (safetensors, `torch.save` pickles, GGUF and its
//!   quantisation types), knowing no model.
//! - [`checkpoint`]: the loader above formats and families: Hugging Face directories,
//!   single weight files and GGUF files in, Hugging Face directories out; strict and atomic.
//! - [`atomic`]: files replaced whole or not at all.
//! - [`chat`]: conversations rendered by the model's own chat template.
//! - [`tokenize`]: `tokenizer.json`, character-level, trained BPE.
//! - [`embedding`]: sentence embeddings as sentence-transformers computes them.
//! - [`generate`]: greedy and sampled generation with a key/value cache; [`beam`]: beam
//!   search as transformers does it; [`metrics`]: ROUGE and BLEU for what they write.
//! - [`inspect`]: looking inside through the hook points: caches, logit lens, ablation,
//!   activation patching, head scores, direct logit attribution.
//! - [`data`] and [`train`]: data sets and the step-by-step trainer.
//! - [`sweep`]: search in parts — spaces, samplers (grid, random, TPE), schedules (to
//!   the end, successive halving) — run from snapshots; the learning-rate range test.
//! - [`plot`]: training curves and attention maps as PNG and SVG; [`display`]: how a
//!   value shows itself (MIME bundles, tables); [`device`]: devices by name.
//! - [`session`]: the command language (`%train 200`, `%plot loss`) that front ends drive.
//! - [`live`]: Rust cells in another process reaching the live session.
//! - [`cuda`]: libtorch's CUDA half, opened only where there is a GPU.
//! - [`shim`]: the few libtorch functions tch does not bind, through a C++ shim.
//! - [`interrupt`] and [`limits`]: what keeps a session alive — interrupts, panics
//!   caught at the boundary, and bounds checked before anything is allocated.
//!
//! The modules import each other downward only, without a cycle, and nothing below
//! [`session`] imports from it (`tests/layout.rs`). The library knows nothing of Jupyter
//! or terminals: front ends drive it.

#![deny(missing_docs)]

pub mod atomic;
pub mod beam;
pub mod chat;
pub mod checkpoint;
pub mod cuda;
pub mod data;
pub mod device;
pub mod display;
pub mod embedding;
pub mod error;
pub mod formats;
pub mod generate;
pub mod generation_config;
pub mod inspect;
pub mod interrupt;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod models;
pub mod plot;
pub mod session;
pub mod shim;
pub mod suggest;
pub mod sweep;
pub mod tokenize;
pub mod train;

pub use error::{Error, Result};

/// tchlab's cache directory, shared with the Makefile: `$XDG_CACHE_HOME/tchlab`, else
/// `~/.cache/tchlab` (models found by name, Rust cells' build directories).
pub fn cache_dir() -> std::path::PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("tchlab")
}
