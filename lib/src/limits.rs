//! Bounds on what input may ask of the machine, checked before anything is allocated:
//! how much memory is there, does a model, a batch or a generation fit in it, and
//! reading files that must be regular files of a bounded size.
//!
//! Every refusal names both numbers (what was asked, what there is) and what to do,
//! and comes before any state changes. libtorch's own allocation errors still reach
//! callers as errors through tch's `f_` functions and [`crate::interrupt::contain`];
//! these checks exist because on Linux a large allocation often succeeds and the
//! process is killed later, when the memory is touched.

use std::io::Read;
use std::path::Path;

use tch::Device;

use crate::error::{Error, Result};
use crate::interrupt;

/// The largest text file (corpus, CSV, JSONL) read whole.
pub const MAX_TEXT_BYTES: u64 = 1 << 30;
/// The largest JSON file (config.json, tokenizer.json, trainer.json) read whole.
pub const MAX_JSON_BYTES: u64 = 512 << 20;
/// Reads go in chunks of this size, checking for interrupts between them.
const CHUNK: usize = 4 << 20;

/// Bytes of memory available for new tensors on `device`: the CPU's `MemAvailable`
/// (within a cgroup's limit, when there is one); on CUDA, the device's free memory when
/// the CUDA runtime says, else `None` (then libtorch's out-of-memory error is the check).
pub fn available_bytes(device: Device) -> Option<u64> {
    match device {
        Device::Cpu => cpu_available(),
        Device::Cuda(i) => {
            crate::cuda::prepare(device);
            cuda_free(i)
        }
        _ => None,
    }
}

fn cpu_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| meminfo.lines().find_map(|l| l.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    let available = kib("MemAvailable:")? * 1024;
    let cgroup = (|| {
        let max: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?.trim().parse().ok()?;
        let current: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.current").ok()?.trim().parse().ok()?;
        Some(max.saturating_sub(current))
    })();
    Some(cgroup.map_or(available, |c| c.min(available)))
}

fn cuda_free(device: usize) -> Option<u64> {
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type GetDevice = unsafe extern "C" fn(*mut i32) -> i32;
    // libtorch_cuda (see `crate::cuda`) brings the CUDA runtime; ask it, when it is there.
    // SAFETY: dlsym on the process's own symbols; the functions have these C signatures
    // (cuda_runtime_api.h) and are called with valid pointers.
    unsafe {
        let symbol = |name: &[u8]| libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr().cast());
        let (info, set, get) = (symbol(b"cudaMemGetInfo\0"), symbol(b"cudaSetDevice\0"), symbol(b"cudaGetDevice\0"));
        if info.is_null() || set.is_null() || get.is_null() {
            return None;
        }
        let (info, set, get): (MemGetInfo, SetDevice, GetDevice) = (std::mem::transmute(info), std::mem::transmute(set), std::mem::transmute(get));
        let mut previous = 0i32;
        if get(&mut previous) != 0 || set(device as i32) != 0 {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        let ok = info(&mut free, &mut total) == 0;
        set(previous);
        ok.then_some(free as u64)
    }
}

/// `1.5 GiB`, `12.0 MiB`.
pub fn format_bytes(bytes: f64) -> String {
    let (value, unit) = if bytes >= (1u64 << 30) as f64 {
        (bytes / (1u64 << 30) as f64, "GiB")
    } else if bytes >= (1u64 << 20) as f64 {
        (bytes / (1u64 << 20) as f64, "MiB")
    } else {
        (bytes / 1024.0, "KiB")
    };
    format!("{value:.1} {unit}")
}

/// Refuses `bytes` of new memory on `device` when the device has less (with a margin
/// for what libtorch itself needs). `what` says what would need it and `advice` what
/// to do instead.
pub fn ensure_fits(what: &str, bytes: f64, device: Device, advice: &str) -> Result<()> {
    let (Some(available), Some(usable)) = (available_bytes(device), usable_bytes(device)) else { return Ok(()) };
    if !(bytes <= usable) {
        return Err(Error::TooLarge(format!(
            "{what} needs about {} but {} has {} available; {advice}",
            format_bytes(bytes),
            crate::device::device_name(device),
            format_bytes(available as f64)
        )));
    }
    Ok(())
}

/// What new allocations on `device` may use: what is free, less a tenth and 256 MiB for
/// everything else the process does; `None` when the device does not say.
pub fn usable_bytes(device: Device) -> Option<f64> {
    available_bytes(device).map(|available| (available as f64 * 0.9 - (256u64 << 20) as f64).max(0.0))
}

/// Opens `path` for reading when it is a regular file (following symbolic links) of at
/// most `limit` bytes: a directory, device, FIFO or socket is refused by name, before
/// anything is read (FIFOs are opened without blocking, then checked again).
pub fn open_regular(path: &Path, limit: u64) -> Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let kind_error = |meta: &std::fs::Metadata| -> Option<&'static str> {
        let t = meta.file_type();
        if t.is_file() {
            None
        } else if t.is_dir() {
            Some("is a directory, not a file")
        } else if t.is_fifo() {
            Some("is a FIFO (named pipe), not a regular file")
        } else if t.is_char_device() || t.is_block_device() {
            Some("is a device, not a regular file")
        } else if t.is_socket() {
            Some("is a socket, not a regular file")
        } else {
            Some("is not a regular file")
        }
    };
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if let Some(why) = kind_error(&meta) {
        return Err(Error::format(path, format!("{why}; tchlab reads regular files only")));
    }
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if let Some(why) = kind_error(&meta) {
        return Err(Error::format(path, format!("{why}; tchlab reads regular files only")));
    }
    if meta.len() > limit {
        return Err(Error::TooLarge(format!(
            "{}: the file is {} and tchlab reads files of at most {} here; use a smaller file or a part of it",
            path.display(),
            format_bytes(meta.len() as f64),
            format_bytes(limit as f64)
        )));
    }
    Ok(file)
}

/// The bytes of a regular file of at most `limit` bytes, read in chunks that an
/// interrupt stops between.
pub fn read_bytes(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = open_regular(path, limit)?;
    let expected = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut bytes = Vec::with_capacity(expected as usize);
    let mut reader = file.take(limit + 1);
    let mut chunk = vec![0u8; CHUNK.min(expected as usize + 1).max(1)];
    loop {
        interrupt::check(&format!("reading {}", path.display()))?;
        let n = reader.read(&mut chunk).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() as u64 > limit {
            return Err(Error::TooLarge(format!("{}: the file grew past {} while it was read", path.display(), format_bytes(limit as f64))));
        }
    }
    Ok(bytes)
}

/// A UTF-8 text file of at most `limit` bytes (see [`read_bytes`]).
pub fn read_text(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_bytes(path, limit)?)
        .map_err(|e| Error::format(path, format!("not UTF-8 text (invalid bytes at offset {}); save it as UTF-8", e.utf8_error().valid_up_to())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_directories_and_large_files_are_refused_by_name() {
        let dev = read_text(Path::new("/dev/zero"), MAX_TEXT_BYTES).unwrap_err().to_string();
        assert!(dev.contains("/dev/zero") && dev.contains("device"), "{dev}");
        let dir = read_text(Path::new("/tmp"), MAX_TEXT_BYTES).unwrap_err().to_string();
        assert!(dir.contains("directory"), "{dir}");
        let path = std::env::temp_dir().join(format!("tchlab-limits-{}", std::process::id()));
        std::fs::write(&path, "hello").unwrap();
        assert_eq!(read_text(&path, 5).unwrap(), "hello");
        let big = read_text(&path, 4).unwrap_err().to_string();
        assert!(big.contains("at most"), "{big}");
        std::fs::write(&path, b"\xff\xfe").unwrap();
        assert!(read_text(&path, 5).unwrap_err().to_string().contains("UTF-8"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_machine_reports_its_memory_and_huge_requests_are_refused() {
        let available = available_bytes(Device::Cpu).expect("Linux reports MemAvailable");
        assert!(available > 0);
        let err = ensure_fits("a test", 1e18, Device::Cpu, "ask for less").unwrap_err().to_string();
        assert!(err.contains("available") && err.contains("ask for less"), "{err}");
        assert!(ensure_fits("a test", f64::NAN, Device::Cpu, "").is_err(), "NaN is not a size");
        assert!(ensure_fits("a test", 1024.0, Device::Cpu, "").is_ok());
    }
}
