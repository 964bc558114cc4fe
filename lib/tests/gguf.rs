//! GGUF files: every quantisation type dequantised exactly as the `gguf` package's
//! `dequantize`, and hostile files (truncated, unknown types, unsupported
//! architectures, sizes that disagree with their type) refused with an error naming
//! the file, the tensor and the type, before anything is loaded.

mod common;

use common::{fixture_tensor, fixtures, scratch};
use tch::Device;
use tchlab::checkpoint::{self, gguf};

#[test]
fn every_type_dequantises_as_the_gguf_package_does() {
    let path = fixtures().join("quants.gguf");
    let meta = gguf::read_metadata(&path).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let names: Vec<&str> = meta.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 11, "{names:?}");
    for info in &meta.tensors {
        let kind = info.name.strip_prefix("t.").unwrap();
        let ours = gguf::read_tensor(&file, &meta, info).unwrap();
        let theirs = fixture_tensor(&fixtures().join("quants.safetensors"), kind);
        assert_eq!(ours.size(), theirs.size(), "{kind} shape");
        assert!(ours.equal(&theirs), "{kind}: not bit for bit the gguf package's values (max |diff| {:e})", common::max_abs_diff(&ours, &theirs));
    }
}

/// A GGUF file of `arch` with one tensor `w` of `dims` (ggml order), type `type_id` and
/// `data` bytes.
fn gguf_file(arch: &str, dims: &[u64], type_id: u32, data: usize) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    string(&mut b, arch);
    string(&mut b, "w");
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(type_id.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(std::iter::repeat_n(0u8, data));
    b
}

fn refused(name: &str, bytes: &[u8]) -> String {
    let dir = scratch("gguf-bad");
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = match checkpoint::load(&path, Device::Cpu) {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(name), "the error names the file: {err}");
    err
}

#[test]
fn hostile_files_are_refused_by_name() {
    // A well-formed file of 64 float32 values, to show the cases below differ only where they say.
    let good = gguf_file("llama", &[64], 0, 256);
    assert!(gguf::read_metadata(&{
        let p = scratch("gguf-good").join("good.gguf");
        std::fs::write(&p, &good).unwrap();
        p
    })
    .is_ok());

    let err = refused("truncated.gguf", &good[..good.len() - 10]);
    assert!(err.contains("truncated") && err.contains("`w`") && err.contains("F32"), "{err}");
    let err = refused("header-cut.gguf", &good[..30]);
    assert!(err.contains("truncated"), "{err}");
    let err = refused("q3k.gguf", &gguf_file("llama", &[256], 11, 110));
    assert!(err.contains("`w`") && err.contains("Q3_K"), "{err}");
    let err = refused("unknown-type.gguf", &gguf_file("llama", &[64], 77, 256));
    assert!(err.contains("`w`") && err.contains("ggml type 77"), "{err}");
    let err = refused("mamba.gguf", &gguf_file("mamba", &[64], 0, 256));
    assert!(err.contains("`mamba`") && err.contains("llama"), "{err}");
    // 40 values are not whole Q8_0 blocks of 32.
    let err = refused("partial-block.gguf", &gguf_file("llama", &[40], 8, 68));
    assert!(err.contains("`w`") && err.contains("Q8_0") && err.contains("block"), "{err}");
    // Dimensions whose product overflows.
    let err = refused("huge.gguf", &gguf_file("llama", &[1 << 40, 1 << 40], 0, 256));
    assert!(err.contains("`w`") && err.contains("overflow"), "{err}");
    // A claimed string far longer than the file.
    let mut long_key = good.clone();
    long_key[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = refused("long-key.gguf", &long_key);
    assert!(err.contains("truncated or corrupt"), "{err}");
    let mut version = good.clone();
    version[4..8].copy_from_slice(&1u32.to_le_bytes());
    let err = refused("v1.gguf", &version);
    assert!(err.contains("version 1"), "{err}");
    let err = refused("not-gguf.gguf", b"PK\x03\x04 this is a zip");
    assert!(err.contains("not a GGUF file"), "{err}");
    // A llama file whose metadata lacks the model's sizes.
    let err = refused("no-config.gguf", &good);
    assert!(err.contains("llama.block_count"), "{err}");
}
