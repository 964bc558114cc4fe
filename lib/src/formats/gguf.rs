//! GGUF files (llama.cpp's format, versions 2 and 3): the header and metadata read and
//! validated, every tensor's offset and size checked against the file before any data
//! is read, and the tensors dequantised to float32 ([`super::quant`]) under the
//! family's Hugging Face names.
//!
//! The file is read with positioned reads, one tensor at a time, rather than memory
//! mapped: a mapped file that another process truncates raises SIGBUS, which would end
//! the session; a short read is an error naming the file.
//!
//! Which architectures load, and how their names map, is each family's [`GgufFamily`]
//! (in `crate::models`); the loader (`crate::checkpoint`) picks it.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::Tensor;

use super::quant::GgmlType;
use crate::error::{Error, Result};

/// How a family reads GGUF files.
pub struct GgufFamily {
    /// `general.architecture` values it reads.
    pub architectures: &'static [&'static str],
    /// A `config.json` made from the metadata.
    pub config: fn(&Metadata) -> Result<Value>,
    /// The Hugging Face name of a llama.cpp tensor name; `None` for tensors with no place.
    pub tensor_name: fn(&str) -> Option<String>,
    /// For tensors whose rows llama.cpp permuted for its rotary layout, the number of
    /// heads to undo it over (`arch`, tensor name, metadata).
    pub unpermute: fn(&str, &str, &Metadata) -> Option<i64>,
    /// What llama.cpp's converter added to every value of a tensor (by its llama.cpp
    /// name): Gemma's norms are stored as `1 + w`. Subtracted on reading, added on writing.
    pub shift: fn(&str) -> f64,
    /// What a file of this model says about it, from its `config.json` (writing).
    pub metadata: fn(&Value) -> Result<Vec<(String, MetaValue)>>,
    /// The llama.cpp name of a Hugging Face tensor name (writing).
    pub gguf_name: fn(&str) -> Option<String>,
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any unsigned integer type.
    Uint(u64),
    /// Any signed integer type.
    Int(i64),
    /// `f32` or `f64`.
    Float(f64),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string (invalid bytes replaced).
    Str(String),
    /// An array of one type.
    Array(Vec<MetaValue>),
}

/// Where a tensor's bytes are and what they hold.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// llama.cpp's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// The shape in PyTorch's order (outermost first).
    pub shape: Vec<i64>,
    /// The element type.
    pub kind: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Byte length of the data.
    pub bytes: u64,
}

/// A GGUF file's header: its metadata and tensor table, checked against the file.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// The file.
    pub path: PathBuf,
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Every key with its value.
    pub values: BTreeMap<String, MetaValue>,
    /// Every tensor, in file order.
    pub tensors: Vec<TensorInfo>,
}

impl Metadata {
    fn get(&self, key: &str) -> Result<&MetaValue> {
        self.values.get(key).ok_or_else(|| Error::format(&self.path, format!("the metadata has no `{key}`")))
    }

    /// A string value.
    pub fn string(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            MetaValue::Str(s) => Ok(s),
            other => Err(Error::format(&self.path, format!("metadata `{key}` should be a string, found {other:?}"))),
        }
    }

    /// An integer value (of any width), as i64.
    pub fn int(&self, key: &str) -> Result<i64> {
        match self.get(key)? {
            MetaValue::Int(i) => Ok(*i),
            MetaValue::Uint(u) => i64::try_from(*u).map_err(|_| Error::format(&self.path, format!("metadata `{key}` = {u} is too large"))),
            other => Err(Error::format(&self.path, format!("metadata `{key}` should be an integer, found {other:?}"))),
        }
    }

    /// A number value.
    pub fn float(&self, key: &str) -> Result<f64> {
        match self.get(key)? {
            MetaValue::Float(f) => Ok(*f),
            MetaValue::Int(i) => Ok(*i as f64),
            MetaValue::Uint(u) => Ok(*u as f64),
            other => Err(Error::format(&self.path, format!("metadata `{key}` should be a number, found {other:?}"))),
        }
    }

    /// A boolean value.
    pub fn bool(&self, key: &str) -> Result<bool> {
        match self.get(key)? {
            MetaValue::Bool(b) => Ok(*b),
            other => Err(Error::format(&self.path, format!("metadata `{key}` should be a boolean, found {other:?}"))),
        }
    }

    fn array(&self, key: &str) -> Result<&[MetaValue]> {
        match self.get(key)? {
            MetaValue::Array(items) => Ok(items),
            other => Err(Error::format(&self.path, format!("metadata `{key}` should be an array, found {other:?}"))),
        }
    }

    /// The length of an array value.
    pub fn array_len(&self, key: &str) -> Result<usize> {
        Ok(self.array(key)?.len())
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                MetaValue::Str(s) => Ok(s.as_str()),
                other => Err(Error::format(&self.path, format!("metadata `{key}` should hold strings, found {other:?}"))),
            })
            .collect()
    }

    /// An array of integers.
    pub fn ints(&self, key: &str) -> Result<Vec<i64>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                MetaValue::Int(i) => Ok(*i),
                MetaValue::Uint(u) => Ok(*u as i64),
                other => Err(Error::format(&self.path, format!("metadata `{key}` should hold integers, found {other:?}"))),
            })
            .collect()
    }

    /// An array of numbers.
    pub fn floats(&self, key: &str) -> Result<Vec<f64>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                MetaValue::Float(f) => Ok(*f),
                MetaValue::Int(i) => Ok(*i as f64),
                MetaValue::Uint(u) => Ok(*u as f64),
                other => Err(Error::format(&self.path, format!("metadata `{key}` should hold numbers, found {other:?}"))),
            })
            .collect()
    }

    /// The text of the token whose id the integer `key` holds
    /// (`tokenizer.ggml.bos_token_id`), when both exist.
    pub fn token(&self, key: &str) -> Option<&str> {
        let id = usize::try_from(self.int(key).ok()?).ok()?;
        match self.array("tokenizer.ggml.tokens").ok()?.get(id)? {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the file has a tensor of this (llama.cpp) name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.iter().any(|t| t.name == name)
    }
}

/// Whether `path` starts with GGUF's magic number (whatever its name: `make models`
/// links files under bare model names).
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    crate::limits::open_regular(path, u64::MAX).is_ok_and(|mut f| f.read_exact(&mut magic).is_ok() && &magic == b"GGUF")
}

/// The most tensors and metadata entries a header may declare.
const MAX_ENTRIES: u64 = 1 << 20;

/// A reader that counts what it has read and refuses to read past the file's end.
struct Header<R> {
    inner: R,
    path: PathBuf,
    position: u64,
    len: u64,
}

impl<R: Read> Header<R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        if n > self.len.saturating_sub(self.position) {
            return Err(Error::format(
                &self.path,
                format!("is truncated or corrupt: {what} at byte {} claims {n} bytes, but the file has {} bytes", self.position, self.len),
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner.read_exact(&mut buf).map_err(|e| Error::io(&self.path, e))?;
        self.position += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.bytes(N as u64, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        Ok(String::from_utf8_lossy(&self.bytes(n, what)?).into_owned())
    }

    fn value(&mut self, kind: u32, key: &str, depth: u32) -> Result<MetaValue> {
        Ok(match kind {
            0 => MetaValue::Uint(u64::from(self.array::<1>(key)?[0])),
            1 => MetaValue::Int(i64::from(self.array::<1>(key)?[0] as i8)),
            2 => MetaValue::Uint(u64::from(u16::from_le_bytes(self.array(key)?))),
            3 => MetaValue::Int(i64::from(i16::from_le_bytes(self.array(key)?))),
            4 => MetaValue::Uint(u64::from(self.u32(key)?)),
            5 => MetaValue::Int(i64::from(i32::from_le_bytes(self.array(key)?))),
            6 => MetaValue::Float(f64::from(f32::from_le_bytes(self.array(key)?))),
            7 => MetaValue::Bool(self.array::<1>(key)?[0] != 0),
            8 => MetaValue::Str(self.string(key)?),
            9 if depth == 0 => {
                let item = self.u32(key)?;
                let n = self.u64(key)?;
                // Every item takes at least one byte: a count beyond the rest of the file is a lie.
                if n > self.len.saturating_sub(self.position) {
                    return Err(Error::format(&self.path, format!("is corrupt: metadata `{key}` claims {n} items, more than the bytes left in the file")));
                }
                let mut items = Vec::with_capacity(n.min(1 << 20) as usize);
                for _ in 0..n {
                    items.push(self.value(item, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            9 => return Err(Error::format(&self.path, format!("metadata `{key}` nests arrays, which GGUF files of language models do not"))),
            10 => MetaValue::Uint(self.u64(key)?),
            11 => MetaValue::Int(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::Float(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(Error::format(&self.path, format!("is corrupt: metadata `{key}` has value type {other}, which GGUF does not define (0..=12)")))
            }
        })
    }
}

/// Reads and checks the header of a GGUF file: magic, version, metadata, and every
/// tensor's type, shape, alignment and extent within the file.
pub fn read_metadata(path: &Path) -> Result<Metadata> {
    let file = crate::limits::open_regular(path, u64::MAX)?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut h = Header { inner: BufReader::new(file), path: path.to_path_buf(), position: 0, len };
    if &h.array::<4>("the magic number")? != b"GGUF" {
        return Err(Error::format(path, "is not a GGUF file (it does not start with `GGUF`)"));
    }
    let version = h.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(Error::format(path, format!("is GGUF version {version}; tchlab reads versions 2 and 3 (convert it again with a recent llama.cpp)")));
    }
    let tensor_count = h.u64("the tensor count")?;
    let kv_count = h.u64("the metadata count")?;
    if tensor_count > MAX_ENTRIES || kv_count > MAX_ENTRIES {
        return Err(Error::format(
            path,
            format!("is corrupt: it declares {tensor_count} tensors and {kv_count} metadata entries (at most {MAX_ENTRIES} each)"),
        ));
    }
    let mut values = BTreeMap::new();
    for _ in 0..kv_count {
        let key = h.string("a metadata key")?;
        let kind = h.u32(&key)?;
        let value = h.value(kind, &key, 0)?;
        values.insert(key, value);
    }
    let alignment = match values.get("general.alignment") {
        None => 32,
        Some(MetaValue::Uint(a)) if a.is_power_of_two() && *a <= 1 << 20 => *a,
        Some(other) => return Err(Error::format(path, format!("is corrupt: `general.alignment` is {other:?}, not a power of two"))),
    };
    let mut raw = Vec::with_capacity(tensor_count as usize);
    let mut names = HashSet::new();
    for _ in 0..tensor_count {
        let name = h.string("a tensor name")?;
        let n_dims = h.u32(&name)?;
        if !(1..=4).contains(&n_dims) {
            return Err(Error::format(path, format!("is corrupt: tensor `{name}` has {n_dims} dimensions (GGUF allows 1 to 4)")));
        }
        let dims = (0..n_dims).map(|_| h.u64(&name)).collect::<Result<Vec<u64>>>()?;
        let type_id = h.u32(&name)?;
        let offset = h.u64(&name)?;
        if !names.insert(name.clone()) {
            return Err(Error::format(path, format!("is corrupt: tensor `{name}` appears twice")));
        }
        raw.push((name, dims, type_id, offset));
    }
    let data_start = h.position.div_ceil(alignment) * alignment;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, dims, type_id, offset) in raw {
        let kind = GgmlType::from_id(type_id).map_err(|message| Error::format(path, format!("tensor `{name}`: {message}")))?;
        let elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= i64::MAX as u64);
        let Some(elements) = elements else {
            return Err(Error::format(path, format!("is corrupt: tensor `{name}` has dimensions {dims:?}, whose product overflows")));
        };
        if dims[0] % kind.block_size() != 0 {
            return Err(Error::format(
                path,
                format!("tensor `{name}` of type {kind:?} has {} values per row, not a multiple of the type's block of {}", dims[0], kind.block_size()),
            ));
        }
        let bytes = elements / kind.block_size() * kind.block_bytes();
        if offset % alignment != 0 {
            return Err(Error::format(path, format!("is corrupt: tensor `{name}` starts at offset {offset}, not a multiple of the alignment {alignment}")));
        }
        let start = data_start.checked_add(offset);
        if start.and_then(|s| s.checked_add(bytes)).is_none_or(|end| end > len) {
            return Err(Error::format(
                path,
                format!("is truncated or corrupt: tensor `{name}` ({kind:?}, shape {dims:?}) needs {bytes} bytes at offset {offset} after the header, past the end of the file ({len} bytes)"),
            ));
        }
        let shape = dims.iter().rev().map(|&d| d as i64).collect();
        tensors.push(TensorInfo { name, shape, kind, offset: data_start + offset, bytes });
    }
    Ok(Metadata { path: path.to_path_buf(), version, values, tensors })
}

/// The tensors of a GGUF file under the family's Hugging Face names, dequantised to
/// float32, with llama.cpp's rotary permutation undone. Tensors the family has no name
/// for are returned under their own names (so a strict load reports them).
pub fn read_tensors(meta: &Metadata, gguf: &GgufFamily) -> Result<Vec<(String, Tensor)>> {
    let arch = meta.string("general.architecture")?;
    let file = File::open(&meta.path).map_err(|e| Error::io(&meta.path, e))?;
    let total: u64 = meta.tensors.iter().map(|t| t.shape.iter().product::<i64>() as u64 * 4).sum();
    crate::limits::ensure_fits(
        &format!("the float32 weights of {}", meta.path.display()),
        total as f64,
        tch::Device::Cpu,
        "free memory, or load a smaller model",
    )?;
    let mut out = Vec::with_capacity(meta.tensors.len());
    for info in &meta.tensors {
        crate::interrupt::check(&format!("loading {}", meta.path.display()))?;
        let mut tensor = read_tensor(&file, meta, info)?;
        if let Some(heads) = (gguf.unpermute)(arch, &info.name, meta) {
            tensor = reverse_permute(&tensor, heads).map_err(|e| Error::format(&meta.path, format!("tensor `{}`: {e}", info.name)))?;
        }
        let shift = (gguf.shift)(&info.name);
        if shift != 0.0 {
            tensor = tensor.f_sub_scalar(shift)?;
        }
        let name = (gguf.tensor_name)(&info.name).unwrap_or_else(|| info.name.clone());
        out.push((name, tensor));
    }
    Ok(out)
}

/// llama.cpp's tensors outside a decoder's blocks, and transformers' names for them.
pub const DECODER_TOP_TENSORS: [(&str, &str); 3] =
    [("token_embd.weight", "model.embed_tokens.weight"), ("output_norm.weight", "model.norm.weight"), ("output.weight", "lm_head.weight")];

/// Sets `bos_token_id`, `eos_token_id` and `pad_token_id` in a `config.json` made from a
/// GGUF file, where its tokenizer metadata names them.
pub fn set_special_token_ids(meta: &Metadata, config: &mut Value) {
    for (gguf_key, config_key) in
        [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id"), ("tokenizer.ggml.padding_token_id", "pad_token_id")]
    {
        if let Ok(id) = meta.int(gguf_key) {
            config[config_key] = id.into();
        }
    }
}

/// The Hugging Face name of a llama.cpp tensor name, given a family's tensors outside
/// the blocks (`token_embd.weight`) and its block modules (`attn_q` ↔
/// `self_attn.q_proj`) as (llama.cpp, transformers) pairs.
pub fn hf_name(name: &str, top: &[(&str, &str)], block: &[(&str, &str)]) -> Option<String> {
    if let Some((_, hf)) = top.iter().find(|(gguf, _)| *gguf == name) {
        return Some(hf.to_string());
    }
    let (layer, rest) = name.strip_prefix("blk.")?.split_once('.')?;
    layer.parse::<u32>().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let (_, hf) = block.iter().find(|(gguf, _)| *gguf == module)?;
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// The llama.cpp name of a Hugging Face tensor name (the inverse of [`hf_name`]).
pub fn gguf_name(name: &str, top: &[(&str, &str)], block: &[(&str, &str)]) -> Option<String> {
    if let Some((gguf, _)) = top.iter().find(|(_, hf)| *hf == name) {
        return Some(gguf.to_string());
    }
    let (layer, rest) = name.strip_prefix("model.layers.")?.split_once('.')?;
    layer.parse::<u32>().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let (gguf, _) = block.iter().find(|(_, hf)| *hf == module)?;
    Some(format!("blk.{layer}.{gguf}.{suffix}"))
}

/// One tensor of the file, dequantised to float32, in llama.cpp's row order.
pub fn read_tensor(file: &File, meta: &Metadata, info: &TensorInfo) -> Result<Tensor> {
    let mut raw = vec![0u8; info.bytes as usize];
    file.read_exact_at(&mut raw, info.offset).map_err(|e| Error::format(&meta.path, format!("reading tensor `{}`: {e}", info.name)))?;
    let values = super::quant::dequantize(info.kind, &raw).map_err(|message| Error::format(&meta.path, format!("tensor `{}`: {message}", info.name)))?;
    Ok(Tensor::f_from_slice(&values)?.f_reshape(&info.shape)?)
}

/// Rows of `w: (out, ...)` back in Hugging Face order from llama.cpp's rotary
/// interleaving over `heads` heads (transformers' `_reverse_permute_weights`).
fn reverse_permute(w: &Tensor, heads: i64) -> Result<Tensor> {
    rotary_rows(w, heads, false)
}

/// Rows of `w: (out, ...)` in llama.cpp's rotary interleaving over `heads` heads, as its
/// converter permutes them (`LlamaModel.permute`).
pub fn permute(w: &Tensor, heads: i64) -> Result<Tensor> {
    rotary_rows(w, heads, true)
}

/// Each head's rows as (pairs, 2) read as (2, pairs) (`to_llama_cpp`) or back.
fn rotary_rows(w: &Tensor, heads: i64, to_llama_cpp: bool) -> Result<Tensor> {
    let shape = w.size();
    let rows = shape[0];
    if heads <= 0 || rows % (2 * heads) != 0 {
        return Err(Error::Invalid(format!("its {rows} rows cannot be split over {heads} heads of rotary pairs")));
    }
    let mut split = if to_llama_cpp { vec![heads, 2, rows / heads / 2] } else { vec![heads, rows / heads / 2, 2] };
    split.extend_from_slice(&shape[1..]);
    Ok(w.f_reshape(&split)?.f_swapaxes(2, 1)?.f_reshape(&shape)?)
}
