//! The one linear layer every family's attention, MLP and LM head use, and what can be
//! put around it in place without the family knowing: a LoRA adapter (Hu et al. 2021,
//! "LoRA: Low-Rank Adaptation of Large Language Models"), as peft's `lora.Linear`
//! wraps a base layer
//! (<https://github.com/huggingface/peft/blob/5d602fdb/src/peft/tuners/lora/layer.py>).
//!
//! A family builds each projection with [`Linear::new`] (or [`Linear::head`] for the
//! output head) and calls [`Linear::forward_t`]; that is all. While a model is built
//! ([`collect`]), every layer registers a [`LinearHandle`] — its module path, sizes and
//! a shared slot — so that [`super::lora`] can find layers by name and put adapters in
//! their slots: the weight itself, its variable and its name never change, which is
//! what "the base untouched" means here.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard};

use tch::{nn, Kind, Tensor};

use crate::error::Result;

/// `y = x Wᵀ + b`, plus whatever is in its slot.
#[derive(Debug)]
pub struct Linear {
    /// The weight `(out, in)`: the variable `<path>.weight`.
    pub ws: Tensor,
    /// The bias `(out,)`, when the layer has one.
    pub bs: Option<Tensor>,
    slot: Arc<Mutex<Slot>>,
}

/// What a layer carries besides its weight.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// A LoRA adapter, when one is attached.
    pub(crate) lora: Option<LoraWeights>,
}

/// One layer's LoRA adapter: `y += scaling · B A dropout(x)`, A `(r, in)` and B
/// `(out, r)` as peft stores them (`lora_A.weight`, `lora_B.weight`).
#[derive(Debug)]
pub(crate) struct LoraWeights {
    /// `(r, in)`: the variable `<path>.lora_A.weight`.
    pub(crate) a: Tensor,
    /// `(out, r)`: the variable `<path>.lora_B.weight`.
    pub(crate) b: Tensor,
    /// `alpha / r`, or `alpha / √r` with rsLoRA.
    pub(crate) scaling: f64,
    /// Dropout on the adapter's input only, in training.
    pub(crate) dropout: f64,
    /// Switched off (`%lora off`): the layer computes its base alone.
    pub(crate) enabled: bool,
}

/// Whether a layer is one of the network's projections or its output head (which peft's
/// `all-linear` leaves out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Attention and MLP projections (and BERT's pooler).
    Inner,
    /// The LM head or a classifier.
    Head,
}

/// A registered layer, as the model keeps it: where it is and its slot.
#[derive(Debug)]
pub struct LinearHandle {
    /// The module's path (`model.layers.0.self_attn.q_proj`): its weight's variable name
    /// without `.weight`.
    pub path: String,
    /// Input features.
    pub in_features: i64,
    /// Output features.
    pub out_features: i64,
    /// Inner projection or head.
    pub role: Role,
    /// The weight variable (shared with the layer).
    pub weight: Tensor,
    slot: Arc<Mutex<Slot>>,
}

impl LinearHandle {
    pub(crate) fn slot(&self) -> MutexGuard<'_, Slot> {
        lock(&self.slot)
    }
}

thread_local! {
    /// The layers of the model being built on this thread, when [`collect`] is running.
    static BUILDING: RefCell<Option<Vec<LinearHandle>>> = const { RefCell::new(None) };
}

/// Runs `build` and returns what it built with every [`Linear`] it made, sorted by path.
pub(crate) fn collect<T>(build: impl FnOnce() -> T) -> (T, Vec<LinearHandle>) {
    struct Reset(Option<Vec<LinearHandle>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            BUILDING.with(|b| *b.borrow_mut() = self.0.take());
        }
    }
    let outer = BUILDING.with(|b| b.borrow_mut().replace(vec![]));
    let reset = Reset(outer);
    let built = build();
    let mut handles = BUILDING.with(|b| b.borrow_mut().take()).unwrap_or_default();
    drop(reset);
    handles.sort_by(|a, b| a.path.cmp(&b.path));
    (built, handles)
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Linear {
    /// A projection of `in_features` to `out_features` under `p` (variables `weight` and,
    /// with `config.bias`, `bias`), initialised as `config` says.
    pub fn new(p: &nn::Path, in_features: i64, out_features: i64, config: nn::LinearConfig) -> Linear {
        Self::with_role(p, in_features, out_features, config, Role::Inner)
    }

    /// An output head (an LM head, a classifier): a projection that adapters given as
    /// `all-linear` leave alone.
    pub fn head(p: &nn::Path, in_features: i64, out_features: i64, config: nn::LinearConfig) -> Linear {
        Self::with_role(p, in_features, out_features, config, Role::Head)
    }

    fn with_role(p: &nn::Path, in_features: i64, out_features: i64, config: nn::LinearConfig, role: Role) -> Linear {
        let nn::Linear { ws, bs } = nn::linear(p, in_features, out_features, config);
        let slot = Arc::new(Mutex::new(Slot::default()));
        BUILDING.with(|b| {
            if let Some(handles) = b.borrow_mut().as_mut() {
                let path = p.components().collect::<Vec<_>>().join(".");
                handles.push(LinearHandle { path, in_features, out_features, role, weight: ws.shallow_clone(), slot: slot.clone() });
            }
        });
        Linear { ws, bs, slot }
    }

    /// `x Wᵀ + b` for `x: (.., in)`, with the adapter when one is on (its dropout only
    /// when `train`).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = x.linear(&self.ws, self.bs.as_ref());
        match &lock(&self.slot).lora {
            Some(lora) if lora.enabled => {
                let input = if x.kind() == lora.a.kind() { x.shallow_clone() } else { x.to_kind(lora.a.kind()) };
                let delta =
                    input.dropout(lora.dropout, train && lora.dropout > 0.0).linear::<Tensor>(&lora.a, None).linear::<Tensor>(&lora.b, None) * lora.scaling;
                let kind = y.kind();
                y + delta.to_kind(kind)
            }
            _ => y,
        }
    }

    /// [`Linear::forward_t`] outside training.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_t(x, false)
    }

    /// The weight the layer computes with: `W + scaling · B A` while an adapter is on
    /// (what the analyses that split a projection by head read), `W` otherwise.
    pub fn effective_weight(&self) -> Result<Tensor> {
        match &lock(&self.slot).lora {
            Some(lora) if lora.enabled => Ok(self.ws.f_add(&lora.delta()?.f_to_kind(self.ws.kind())?)?),
            _ => Ok(self.ws.shallow_clone()),
        }
    }
}

impl LoraWeights {
    /// `scaling · B A`, `(out, in)`, in float32 (as peft merges on the CPU).
    pub(crate) fn delta(&self) -> Result<Tensor> {
        Ok(self.b.f_to_kind(Kind::Float)?.f_matmul(&self.a.f_to_kind(Kind::Float)?)?.f_mul_scalar(self.scaling)?)
    }
}
