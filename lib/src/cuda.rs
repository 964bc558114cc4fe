//! CUDA, loaded when there is a GPU to use.
//!
//! libtorch's CUDA half (`libtorch_cuda.so`, with cuDNN, cuBLAS and the CUDA runtime)
//! takes a fifth of a second to load and initialise, and a machine without a GPU gets
//! nothing for it, so the binaries do not link it: it is opened here, once, before the
//! first question about CUDA — when the machine has an NVIDIA device node, or when a
//! CUDA device is asked for. libtorch finds its CUDA hooks through a registry that the
//! library's initialisers fill, and reads that registry on its first CUDA query, so
//! every such query in tchlab goes through this module.

use std::sync::OnceLock;

use tch::Device;

/// Where the build found libtorch (see `lib/build.rs`).
const LIBTORCH_LIB: &str = env!("TCHLAB_LIBTORCH_LIB");

static LOADED: OnceLock<bool> = OnceLock::new();

/// Whether this machine shows an NVIDIA GPU to this process: a device node, and
/// `CUDA_VISIBLE_DEVICES` not hiding every device (looked at once).
fn gpu_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(scan_for_gpu)
}

fn scan_for_gpu() -> bool {
    if matches!(std::env::var("CUDA_VISIBLE_DEVICES").as_deref(), Ok("") | Ok("-1")) {
        return false;
    }
    let nodes = std::fs::read_dir("/dev").map(|dir| {
        dir.flatten().any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("nvidia").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
    });
    nodes.unwrap_or(false) || std::path::Path::new("/dev/dxg").exists()
}

/// Opens `libtorch_cuda.so` (once; later calls return the first answer). Returns
/// whether libtorch now has its CUDA half.
pub fn load() -> bool {
    *LOADED.get_or_init(|| {
        let candidates = [format!("{LIBTORCH_LIB}/libtorch_cuda.so"), "libtorch_cuda.so".to_string()];
        candidates.iter().any(|path| {
            let Ok(path) = std::ffi::CString::new(path.as_str()) else { return false };
            // SAFETY: dlopen with a valid C string; the handle is kept open for the
            // life of the process (libtorch's registries point into the library).
            !unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) }.is_null()
        })
    })
}

/// Loads CUDA when this machine has a GPU; the cheap check comes first.
fn load_if_present() -> bool {
    LOADED.get().copied().unwrap_or_else(|| gpu_present() && load())
}

/// Whether a CUDA device can be used.
pub fn is_available() -> bool {
    load_if_present() && tch::Cuda::is_available()
}

/// How many CUDA devices there are.
pub fn device_count() -> i64 {
    if load_if_present() {
        tch::Cuda::device_count()
    } else {
        0
    }
}

/// CUDA device 0 when available, else the CPU (`tch::Device::cuda_if_available`).
pub fn best_device() -> Device {
    if is_available() {
        Device::Cuda(0)
    } else {
        Device::Cpu
    }
}

/// Makes `device` usable: loads CUDA for a CUDA device (a no-op otherwise). Whether the
/// device exists is left to the caller or to libtorch's error.
pub fn prepare(device: Device) {
    if device.is_cuda() {
        load();
    }
}

/// Waits for the kernels queued on CUDA device `index`.
pub fn synchronize(index: usize) {
    if load_if_present() {
        tch::Cuda::synchronize(index as i64);
    }
}
