//! The one linear layer every family's attention, MLP and LM head use, and what can be
//! put around it in place without the family knowing: a LoRA adapter (Hu et al. 2021,
//! "LoRA: Low-Rank Adaptation of Large Language Models"), as peft's `lora.Linear`
//! wraps a base layer
//! (<https://github.com/huggingface/peft/blob/5d602fdb/src/peft/tuners/lora/layer.py>),
//! and the weight packed in fewer bits ([`super::quantize`]), which the layer then
//! computes with instead of its float weight (kept, so that going back is exact).
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

use super::quantize::Packed;
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
    /// The weight in a quantised format, when the layer computes with one.
    pub(crate) packed: Option<Packed>,
    /// True where a pruned weight stays ([`super::prune`]).
    pub(crate) mask: Option<Tensor>,
    /// While calibrating: the sum over every input seen of each feature's square.
    pub(crate) calibration: Option<Tensor>,
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

    /// A head whose weight is another layer's (an LM head tied to the token embedding):
    /// no variable of its own, but a layer that can be quantised like any other.
    pub fn tied_head(p: &nn::Path, weight: &Tensor) -> Linear {
        let slot = Arc::new(Mutex::new(Slot::default()));
        let size = weight.size();
        let (out_features, in_features) = (size[0], size.get(1).copied().unwrap_or(1));
        BUILDING.with(|b| {
            if let Some(handles) = b.borrow_mut().as_mut() {
                let path = p.components().collect::<Vec<_>>().join(".");
                handles.push(LinearHandle { path, in_features, out_features, role: Role::Head, weight: weight.shallow_clone(), slot: slot.clone() });
            }
        });
        Linear { ws: weight.shallow_clone(), bs: None, slot }
    }

    /// `x Wᵀ + b` for `x: (.., in)`, with the adapter when one is on (its dropout only
    /// when `train`).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut slot = lock(&self.slot);
        if let Some(sums) = slot.calibration.as_mut() {
            let squares = tch::no_grad(|| {
                x.f_detach()?.f_reshape([-1, self.ws.size()[1]])?.f_to_kind(Kind::Double)?.f_square()?.f_sum_dim_intlist([0].as_slice(), false, Kind::Double)
            })?;
            let _ = sums.f_add_(&squares)?;
        }
        let y = match &slot.packed {
            // The kernel gives no gradient; where one must flow back through the layer
            // (adapters below it train), it is the dequantised weight's: the term added is
            // zero, its gradient Wᵀ·dy, as QLoRA's is.
            Some(p) => {
                let y = p.matmul(x, self.bs.as_ref())?;
                if x.requires_grad() {
                    let w = p.dequantize()?.f_to_kind(x.kind())?;
                    y.f_detach()?.f_add(&x.f_sub(&x.f_detach()?)?.f_linear::<Tensor>(&w, None)?)?
                } else {
                    y
                }
            }
            None => x.f_linear(&self.ws, self.bs.as_ref())?,
        };
        Ok(match &slot.lora {
            Some(lora) if lora.enabled => {
                let input = if x.kind() == lora.a.kind() { x.shallow_clone() } else { x.f_to_kind(lora.a.kind())? };
                let delta = input
                    .f_dropout(lora.dropout, train && lora.dropout > 0.0)?
                    .f_linear::<Tensor>(&lora.a, None)?
                    .f_linear::<Tensor>(&lora.b, None)?
                    .f_mul_scalar(lora.scaling)?;
                y.f_add(&delta.f_to_kind(y.kind())?)?
            }
            _ => y,
        })
    }

    /// [`Linear::forward_t`] outside training.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }

    /// The weight the layer computes with: its float weight or the dequantised packed
    /// one, plus `scaling · B A` while an adapter is on (what the analyses that split a
    /// projection by head read).
    pub fn effective_weight(&self) -> Result<Tensor> {
        let slot = lock(&self.slot);
        let base = match &slot.packed {
            Some(p) => p.dequantize()?.f_to_kind(self.ws.kind())?,
            None => self.ws.shallow_clone(),
        };
        match &slot.lora {
            Some(lora) if lora.enabled => Ok(base.f_add(&lora.delta()?.f_to_kind(base.kind())?)?),
            _ => Ok(base),
        }
    }
}

impl LoraWeights {
    /// `scaling · B A`, `(out, in)`, in float32 (as peft merges on the CPU).
    pub(crate) fn delta(&self) -> Result<Tensor> {
        Ok(self.b.f_to_kind(Kind::Float)?.f_matmul(&self.a.f_to_kind(Kind::Float)?)?.f_mul_scalar(self.scaling)?)
    }
}
