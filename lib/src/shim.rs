//! What tchlab needs of libtorch that tch does not bind, through a few lines of C++
//! (`shim.cpp`, compiled by the build script against the libtorch tchlab links):
//! fbgemm's float16 GEMM for the quantised linear layer, and the state of the default
//! random generators, which gradient checkpointing saves and restores so that a block
//! recomputed in the backward pass draws the dropout masks it drew the first time.

use tch::{Device, Tensor};
use torch_sys::C_tensor;

use crate::error::{Error, Result};

extern "C" {
    fn tchlab_fp16_pack(weight: *mut C_tensor) -> *mut C_tensor;
    fn tchlab_fp16_linear(x: *mut C_tensor, packed: *mut C_tensor) -> *mut C_tensor;
    fn tchlab_rng_state(index: std::os::raw::c_int) -> *mut C_tensor;
    fn tchlab_set_rng_state(index: std::os::raw::c_int, state: *mut C_tensor) -> *mut C_tensor;
    fn tchlab_shim_error() -> *const std::os::raw::c_char;
}

fn owned(ptr: *mut C_tensor, what: &str) -> Result<Tensor> {
    if ptr.is_null() {
        // SAFETY: the shim returns a NUL-terminated message that lives until its next
        // call on this thread.
        let message = unsafe { std::ffi::CStr::from_ptr(tchlab_shim_error()) }.to_string_lossy().into_owned();
        return Err(Error::Invalid(format!("{what}: {message}")));
    }
    // SAFETY: the shim returns a new `at::Tensor*` that it gives up.
    Ok(unsafe { Tensor::from_ptr(ptr) })
}

/// `weight (out, in)` float32 in fbgemm's packed float16 form (an opaque tensor).
pub fn pack_fp16(weight: &Tensor) -> Result<Tensor> {
    let mut w = weight.shallow_clone();
    // SAFETY: the pointer is valid while `w` lives; the shim copies what it needs.
    owned(unsafe { tchlab_fp16_pack(w.as_mut_ptr()) }, "packing a weight for fbgemm's fp16 GEMM")
}

/// `x (rows, in)` float32 times a packed weight.
pub fn linear_fp16(x: &Tensor, packed: &Tensor) -> Result<Tensor> {
    let (mut x, mut p) = (x.shallow_clone(), packed.shallow_clone());
    // SAFETY: both pointers are valid while the clones live.
    owned(unsafe { tchlab_fp16_linear(x.as_mut_ptr(), p.as_mut_ptr()) }, "fbgemm's fp16 GEMM")
}

/// The generator index the shim takes: -1 for the CPU's, else the CUDA device's.
fn generator_index(device: Device) -> std::os::raw::c_int {
    match device {
        Device::Cuda(index) => index as std::os::raw::c_int,
        _ => -1,
    }
}

/// The state of `device`'s default random generator, as `torch.get_rng_state()` (or
/// `torch.cuda.get_rng_state(device)`) returns it.
pub fn rng_state(device: Device) -> Result<Tensor> {
    // SAFETY: the shim only reads the generator, under its lock.
    owned(unsafe { tchlab_rng_state(generator_index(device)) }, "reading the random generator's state")
}

/// Puts `device`'s default random generator back to a state [`rng_state`] returned.
pub fn set_rng_state(device: Device, state: &Tensor) -> Result<()> {
    let mut s = state.shallow_clone();
    // SAFETY: the pointer is valid while `s` lives; the generator copies the state.
    owned(unsafe { tchlab_set_rng_state(generator_index(device), s.as_mut_ptr()) }, "restoring the random generator's state").map(drop)
}
