//! Writing a file so that it is either entirely the old content or entirely the new,
//! which every file tchlab writes goes through (checkpoints, tokenizers, histories,
//! figures, sweep files, the kernel's spec, Rust cells' records).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes a file so that it is either entirely the old content or entirely the new:
/// the bytes go to a new temporary file in the same directory, which is flushed to
/// disk and then renamed over the target.
///
/// As editors and IPython's `%%writefile` do, a symbolic link is written through (its
/// target is replaced, the link stays) and an existing file keeps its permissions (and,
/// when run as root, its owner). A target that exists but is not a regular file (a
/// directory, device, FIFO) is refused before anything is written.
pub fn write(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let target = follow_links(path)?;
    let existing = match std::fs::metadata(&target) {
        Ok(meta) if meta.is_file() => Some(meta),
        Ok(_) => return Err(Error::format(&target, "exists and is not a regular file (a directory, device or FIFO); nothing was written")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&target, e)),
    };
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().ok_or_else(|| Error::Invalid(format!("{}: not a file name", path.display())))?.to_os_string();
    let (tmp, file) = create_temporary(&dir, &name).map_err(|e| Error::io(path, e))?;
    let result = (|| -> std::io::Result<()> {
        if let Some(meta) = &existing {
            file.set_permissions(meta.permissions())?;
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))?;
            }
        }
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &target)?;
        // The rename itself is durable only once the directory is synced.
        File::open(&dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Follows symbolic links from `path` to the file they end at (which need not exist
/// yet), as an editor saving through a link does.
fn follow_links(path: &Path) -> Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&current).map_err(|e| Error::io(&current, e))?;
                current = match current.parent() {
                    Some(parent) if target.is_relative() => parent.join(target),
                    _ => target,
                };
            }
            _ => return Ok(current),
        }
    }
    Err(Error::format(path, "too many levels of symbolic links"))
}

/// A new file beside `target` with an unpredictable name, created exclusively (so an
/// existing file, or a link planted under a guessed name, is never written through).
fn create_temporary(dir: &Path, name: &std::ffi::OsStr) -> std::io::Result<(PathBuf, File)> {
    use std::hash::{BuildHasher, Hasher};
    let mut last = None;
    for attempt in 0..16u32 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(attempt);
        hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        let tmp = dir.join(format!(".{}.tmp-{:016x}", name.to_string_lossy(), hasher.finish()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no temporary name was free")))
}
