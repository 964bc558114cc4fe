//! Reading and atomically writing `.safetensors` files.
//!
//! Reading goes through the `safetensors` crate over a memory map, which validates the
//! header and every offset, so a truncated or corrupt file is an error, never a crash.
//! Writing streams the format itself (an 8-byte header length, a JSON header, the raw
//! bytes) through [`crate::atomic::write`], so no second copy of the weights is made in
//! memory and a crash mid-save leaves the previous file as it was.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_name(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Float => "F32",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Double => "F64",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        _ => return None,
    })
}

/// Every tensor in a `.safetensors` file, on the CPU, in the file's order.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = crate::limits::open_regular(path, u64::MAX)?;
    // SAFETY: the map is read-only and dropped before this function returns; a file
    // changed underneath would give wrong numbers, not unsafety in our code.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&map).map_err(|e| Error::format(path, format!("not a valid safetensors file ({e}); it may be truncated or corrupt")))?;
    let mut tensors = vec![];
    for (name, view) in st.iter() {
        crate::interrupt::check(&format!("loading {}", path.display()))?;
        let kind =
            kind_of(view.dtype()).ok_or_else(|| Error::format(path, format!("tensor `{name}` has dtype {:?}, which tchlab does not read", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        tensors.push((name.to_string(), Tensor::f_from_data_size(view.data(), &shape, kind)?));
    }
    Ok(tensors)
}

/// Writes `tensors` as a `.safetensors` file, atomically. `metadata` goes in the
/// header's `__metadata__` (Hugging Face writes `{"format": "pt"}`).
pub fn write(path: &Path, tensors: &[(String, Tensor)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("strings serialize"));
    }
    let mut offset = 0usize;
    let mut cpu = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let dtype =
            dtype_name(tensor.kind()).ok_or_else(|| Error::Invalid(format!("tensor `{name}` has kind {:?}, which safetensors cannot store", tensor.kind())))?;
        let t = tensor.f_to_device(Device::Cpu)?.f_contiguous()?;
        let bytes = t.numel() * tensor.kind().elt_size_in_bytes();
        header.insert(name.clone(), serde_json::json!({ "dtype": dtype, "shape": t.size(), "data_offsets": [offset, offset + bytes] }));
        offset += bytes;
        cpu.push(t);
    }
    let mut header = serde_json::to_vec(&header).expect("JSON header");
    // The data section starts 8-aligned, padded with spaces as the format allows.
    header.resize(header.len().next_multiple_of(8), b' ');
    crate::atomic::write(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        let mut buf = vec![];
        for t in &cpu {
            buf.resize(t.numel() * t.kind().elt_size_in_bytes(), 0);
            t.f_copy_data_u8(&mut buf, t.numel()).map_err(std::io::Error::other)?;
            w.write_all(&buf)?;
        }
        Ok(())
    })
}
