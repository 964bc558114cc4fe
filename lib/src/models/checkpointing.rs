//! The loop over a model's blocks that every family runs, and gradient checkpointing
//! (`%set checkpointing=true`) in it: a training pass that keeps each block's input but
//! none of its activations, and recomputes one block at a time in the backward pass —
//! what transformers' `gradient_checkpointing_enable()` does with
//! `torch.utils.checkpoint` around each layer. Activation memory falls from every
//! layer's to one layer's plus the blocks' inputs, for about one more forward pass.
//!
//! tch binds no custom autograd function, so the backward pass is driven here, inside
//! the forward call: the blocks run without a graph, the head and the loss with one; the
//! loss's backward gives the gradient at the last block's output, and each block, rerun
//! with a graph from its saved input, takes the gradient one block down, accumulating
//! its weights' gradients on the way. The random generators are put back before each
//! rerun, as `torch.utils.checkpoint` does with `preserve_rng_state`, so dropout draws
//! the same masks: the gradients are those of the plain pass, bit for bit.

use tch::{Device, Kind, Tensor};

use super::{ForwardOptions, Output};
use crate::error::{invalid, Result};

/// What a checkpointed pass does with the model's output: computes the loss and its
/// backward pass (scaled as the caller wants). The blocks' gradients follow it.
#[derive(Clone, Copy)]
pub struct Backward<'a>(pub &'a dyn Fn(&Output) -> Result<()>);

impl std::fmt::Debug for Backward<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Backward")
    }
}

/// Runs `layers` blocks over `x`, then `tail` (the final norm and the heads) over what
/// they give, with the attention maps collected when `opts` asks. `block(i, x)` gives
/// block `i`'s output and, when asked, its attention probabilities.
///
/// With `opts.checkpoint`, the pass also runs the backward pass (see the module), and
/// the output it returns carries no graph.
pub fn run_blocks(
    layers: usize,
    x: Tensor,
    opts: &ForwardOptions,
    mut block: impl FnMut(usize, Tensor) -> Result<(Tensor, Option<Tensor>)>,
    tail: impl FnOnce(Tensor, Option<Vec<Tensor>>) -> Result<Output>,
) -> Result<Output> {
    let Some(Backward(backward)) = opts.checkpoint else {
        let mut x = x;
        let mut attentions = opts.capture_attention.then(Vec::new);
        for i in 0..layers {
            let (y, probs) = block(i, x)?;
            x = y;
            if let (Some(all), Some(p)) = (attentions.as_mut(), probs) {
                all.push(p);
            }
        }
        return tail(x, attentions);
    };
    if !opts.train || opts.hooks.is_some() || opts.capture_attention {
        return invalid!("gradient checkpointing recomputes the blocks in a training pass; it takes no hooks and captures no attention");
    }
    let device = x.device();
    // Forward: no graph inside the blocks; each block's input and the generators'
    // state before it are kept.
    let mut saved = Vec::with_capacity(layers);
    let mut h = x.detach();
    for i in 0..layers {
        let rng = RngState::capture(device)?;
        let y = tch::no_grad(|| block(i, h.shallow_clone()))?.0;
        saved.push((std::mem::replace(&mut h, y), rng));
    }
    let last = h.set_requires_grad(true);
    let out = tail(last.shallow_clone(), None)?;
    backward(&out)?;
    // Backward, one block at a time from the last.
    let mut grad = last.grad();
    let after = RngState::capture(device)?;
    for (i, (input, rng)) in saved.into_iter().enumerate().rev() {
        if !grad.defined() {
            break;
        }
        let input = input.set_requires_grad(true);
        rng.restore()?;
        let (y, _) = block(i, input.shallow_clone())?;
        if !y.requires_grad() {
            break; // a frozen first block over frozen embeddings: nothing below trains
        }
        y.f_mul(&grad)?.f_sum(Kind::Float)?.f_backward()?;
        grad = input.grad();
    }
    after.restore()?;
    if x.requires_grad() && grad.defined() {
        x.f_mul(&grad)?.f_sum(Kind::Float)?.f_backward()?;
    }
    Ok(out)
}

/// The default random generators' state: the CPU's, and the device's when it is a GPU.
struct RngState {
    cpu: Tensor,
    gpu: Option<(Device, Tensor)>,
}

impl RngState {
    fn capture(device: Device) -> Result<Self> {
        let gpu = match device {
            Device::Cuda(_) => Some((device, crate::shim::rng_state(device)?)),
            _ => None,
        };
        Ok(RngState { cpu: crate::shim::rng_state(Device::Cpu)?, gpu })
    }

    fn restore(&self) -> Result<()> {
        crate::shim::set_rng_state(Device::Cpu, &self.cpu)?;
        if let Some((device, state)) = &self.gpu {
            crate::shim::set_rng_state(*device, state)?;
        }
        Ok(())
    }
}
