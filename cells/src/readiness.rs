//! Whether an evcxr work directory holds a current build of what every Rust cell
//! needs (tch and the tchlab library), so that a cell can say *before* it waits how
//! long the wait will be, and so that `tchlab prepare-rust-cells` (run by `make
//! rust-cells`) does the compile once, ahead of any cell.
//!
//! After each successful start, the work directory records what it was built from:
//! the prelude (tch's version, the library's path), the toolchain (`rustc -vV`) and
//! the library's files (path, size and modification time: what cargo's own
//! fingerprints look at, so "stale" here is "cargo will compile again" there). The
//! next start compares. The record also keeps how long the last compile took, which
//! is the estimate the next notice gives.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

/// The record a work directory keeps of its last successful start.
const RECORD: &str = ".tchlab-build.json";
/// Estimates before anything was measured on this machine: a cold build of tch and
/// the library measured 5½ minutes on 2 cores; the library alone about 2.
const DEFAULT_COLD: Duration = Duration::from_secs(330);
const DEFAULT_LIBRARY: Duration = Duration::from_secs(120);

/// How ready a work directory is for the next start.
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    /// Built from exactly what the next start uses: it takes seconds.
    Ready,
    /// Nothing was ever built there: tch, its C++ shim and the library compile.
    Cold,
    /// Built, but from something else; the text says what changed.
    Stale(String),
}

/// What a build depends on, in the form the record stores.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inputs {
    prelude: String,
    toolchain: String,
    files: String,
}

impl Inputs {
    /// The inputs of a start that compiles `prelude` against the library in `source`.
    pub(crate) fn of(prelude: &str, source: &Path) -> Inputs {
        let toolchain = std::process::Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
            .arg("-vV")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Inputs { prelude: prelude.to_string(), toolchain, files: files_fingerprint(source) }
    }
}

/// The work directory's state against `inputs`.
pub(crate) fn readiness(dir: &Path, inputs: &Inputs) -> Readiness {
    let Some(record) = read_record(dir) else {
        return if built_anything(dir) { Readiness::Stale("this work directory has no record of what it was built from".into()) } else { Readiness::Cold };
    };
    let field = |k: &str| record.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    if !built_anything(dir) {
        Readiness::Cold
    } else if field("toolchain") != inputs.toolchain {
        Readiness::Stale("the Rust toolchain changed since they were last built, so tch and the tchlab library compile again".into())
    } else if field("prelude") != inputs.prelude {
        Readiness::Stale("the tchlab library is at another path (another checkout) or tch's version changed, so the library compiles again".into())
    } else if field("files") != inputs.files {
        Readiness::Stale("the tchlab library's source changed since they were last built, so it compiles again".into())
    } else {
        Readiness::Ready
    }
}

/// About how long a start in this state takes, from what was measured last.
pub(crate) fn estimate(dir: &Path, state: &Readiness) -> Duration {
    let measured = |key: &str| read_record(dir).and_then(|r| r.get(key)?.as_f64()).filter(|s| s.is_finite() && *s > 0.0).map(Duration::from_secs_f64);
    match state {
        Readiness::Ready => Duration::from_secs(5),
        Readiness::Cold => measured("cold_seconds").unwrap_or(DEFAULT_COLD),
        Readiness::Stale(_) => measured("library_seconds").unwrap_or(DEFAULT_LIBRARY),
    }
}

/// Records a successful start from `inputs` that took `took` in state `was`.
pub(crate) fn record(dir: &Path, inputs: &Inputs, was: &Readiness, took: Duration) {
    let previous = read_record(dir).unwrap_or_else(|| json!({}));
    let mut record = json!({
        "prelude": inputs.prelude,
        "toolchain": inputs.toolchain,
        "files": inputs.files,
        "cold_seconds": previous.get("cold_seconds").cloned().unwrap_or(Value::Null),
        "library_seconds": previous.get("library_seconds").cloned().unwrap_or(Value::Null),
    });
    match was {
        Readiness::Cold => record["cold_seconds"] = json!(took.as_secs_f64()),
        Readiness::Stale(_) => record["library_seconds"] = json!(took.as_secs_f64()),
        Readiness::Ready => {}
    }
    // A lost record only costs a notice that says "stale" once too often.
    let _ = tchlab::atomic::write(&dir.join(RECORD), |w| std::io::Write::write_all(w, record.to_string().as_bytes()));
}

/// The notice a cell gives before it waits; `None` when it will not wait.
pub(crate) fn notice(state: &Readiness, estimate: Duration) -> Option<String> {
    let about = minutes(estimate);
    match state {
        Readiness::Ready => None,
        Readiness::Cold => Some(format!(
            "preparing Rust cells: compiling tch and tchlab, about {about}, once (`make rust-cells` does it ahead of time). An interrupt gives the session back at once; the next Rust cell carries on from what was compiled."
        )),
        Readiness::Stale(why) => Some(format!(
            "preparing Rust cells: {why}; about {about}. An interrupt gives the session back at once; the next Rust cell carries on from what was compiled."
        )),
    }
}

/// "about 5 minutes", "about 1 minute", "under a minute".
pub(crate) fn minutes(d: Duration) -> String {
    match (d.as_secs_f64() / 60.0).round() as u64 {
        0 => "under a minute".into(),
        1 => "1 minute".into(),
        n => format!("{n} minutes"),
    }
}

fn read_record(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(RECORD)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether evcxr has compiled anything in `dir`.
fn built_anything(dir: &Path) -> bool {
    dir.join("target").is_dir()
}

/// Path, size and modification time of every file of the library a build reads.
fn files_fingerprint(source: &Path) -> String {
    let mut files: Vec<PathBuf> = ["Cargo.toml", "build.rs"].iter().map(|f| source.join(f)).filter(|p| p.is_file()).collect();
    collect(&source.join("src"), &mut files);
    collect(&source.join("assets"), &mut files);
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for file in files {
        let Ok(meta) = std::fs::metadata(&file) else { continue };
        let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
        feed(file.to_string_lossy().as_bytes());
        feed(&meta.len().to_le_bytes());
        feed(&modified.as_nanos().to_le_bytes());
    }
    format!("{hash:016x}")
}

fn collect(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => collect(&path, into),
            Ok(t) if t.is_file() => into.push(path),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tchlab-readiness-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_directory_is_cold_then_ready_then_stale_when_the_library_changes() {
        let (work, source) = (scratch("work"), scratch("source"));
        std::fs::create_dir_all(source.join("src")).unwrap();
        std::fs::write(source.join("Cargo.toml"), "[package]").unwrap();
        std::fs::write(source.join("src/lib.rs"), "//! x").unwrap();
        let inputs = Inputs::of("prelude", &source);
        assert_eq!(readiness(&work, &inputs), Readiness::Cold);
        assert!(notice(&Readiness::Cold, estimate(&work, &Readiness::Cold)).unwrap().contains("compiling tch and tchlab, about 6 minutes"));
        std::fs::create_dir_all(work.join("target")).unwrap();
        record(&work, &inputs, &Readiness::Cold, Duration::from_secs(200));
        assert_eq!(readiness(&work, &inputs), Readiness::Ready);
        assert_eq!(notice(&Readiness::Ready, Duration::ZERO), None);
        assert_eq!(estimate(&work, &Readiness::Cold), Duration::from_secs(200));
        std::fs::write(source.join("src/lib.rs"), "//! changed, and longer").unwrap();
        let state = readiness(&work, &Inputs::of("prelude", &source));
        assert!(matches!(&state, Readiness::Stale(why) if why.contains("source changed")), "{state:?}");
        assert!(matches!(readiness(&work, &Inputs::of("another", &source)), Readiness::Stale(why) if why.contains("another path")));
        std::fs::remove_dir_all(work.join("target")).unwrap();
        assert_eq!(readiness(&work, &inputs), Readiness::Cold);
        let _ = std::fs::remove_dir_all(work);
        let _ = std::fs::remove_dir_all(source);
    }
}
