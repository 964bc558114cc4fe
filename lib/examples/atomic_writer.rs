//! Writes a `.safetensors` file of a given size through tchlab's atomic save, printing
//! `writing` just before it starts. The atomic-save test kills it mid-write to show
//! that the previous file survives; it also times saves on a disk.
//!
//! Usage: `atomic_writer PATH MEBIBYTES VALUE` (every element is VALUE).

use std::collections::BTreeMap;
use std::io::Write;

fn main() -> tchlab::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, mib, value] = args.as_slice() else {
        eprintln!("usage: atomic_writer PATH MEBIBYTES VALUE");
        std::process::exit(2);
    };
    let (mib, value): (i64, f64) = (mib.parse().expect("MEBIBYTES is a number"), value.parse().expect("VALUE is a number"));
    // Several tensors, so the write is a sequence of chunks like a real model's.
    let per_tensor = mib * (1 << 20) / 4 / 8;
    let tensors: Vec<(String, tch::Tensor)> =
        (0..8).map(|i| (format!("w{i}"), tch::Tensor::full([per_tensor], value, (tch::Kind::Float, tch::Device::Cpu)))).collect();
    println!("writing");
    std::io::stdout().flush().expect("stdout");
    tchlab::formats::safetensors::write(std::path::Path::new(path), &tensors, &BTreeMap::new())
}
