//! Saves are atomic: a writer killed in the middle of a save leaves the previous file
//! whole, and a finished save replaces it and leaves no temporary file behind.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tchlab::checkpoint::read_file;

fn writer() -> PathBuf {
    // cargo builds examples beside the test binaries: target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("examples/atomic_writer");
    assert!(path.exists(), "{} is missing: run the tests with `cargo test` (which builds examples)", path.display());
    path
}

fn value_in(path: &Path) -> f64 {
    let tensors = read_file(path).unwrap();
    assert_eq!(tensors.len(), 8);
    tensors[7].1.double_value(&[0])
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp-")).collect()
}

#[test]
fn killed_writer_leaves_the_previous_file_intact() {
    let dir = common::scratch("atomic-kill");
    let target = dir.join("model.safetensors");
    assert!(Command::new(writer()).args([target.to_str().unwrap(), "1", "1.0"]).status().unwrap().success());
    assert_eq!(value_in(&target), 1.0);

    let mut child = Command::new(writer()).args([target.to_str().unwrap(), "768", "2.0"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "writing");
    // Kill it once the temporary file has data in it: the save is under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    let partial = loop {
        if let Some(tmp) = temporaries(&dir).into_iter().find(|p| p.metadata().is_ok_and(|m| m.len() > 0)) {
            break tmp;
        }
        assert!(Instant::now() < deadline, "the writer never started writing");
        std::thread::sleep(Duration::from_micros(200));
    };
    child.kill().unwrap();
    child.wait().unwrap();

    assert!(partial.exists(), "the killed writer's partial file is left beside the target, not in its place");
    assert_eq!(value_in(&target), 1.0, "the previous file is intact and readable");
}

#[test]
fn finished_save_replaces_the_file_and_cleans_up() {
    let dir = common::scratch("atomic-finish");
    let target = dir.join("model.safetensors");
    for value in ["3.0", "4.0"] {
        assert!(Command::new(writer()).args([target.to_str().unwrap(), "2", value]).status().unwrap().success());
    }
    assert_eq!(value_in(&target), 4.0);
    assert!(temporaries(&dir).is_empty());
}

#[test]
fn saving_into_a_missing_directory_is_an_error_naming_it() {
    let target = Path::new("/nonexistent-dir/model.safetensors");
    let t = tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu));
    let err = tchlab::formats::safetensors::write(target, &[("w".into(), t)], &Default::default()).unwrap_err().to_string();
    assert!(err.contains("/nonexistent-dir/model.safetensors"), "{err}");
}
