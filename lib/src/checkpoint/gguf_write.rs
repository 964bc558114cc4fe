//! Writing GGUF files (`%save FILE.gguf`), as llama.cpp's `convert_hf_to_gguf.py` writes
//! them: the model's config as `{arch}.*` metadata ([`GgufFamily::metadata`]), the
//! byte-level BPE tokenizer and chat template as `tokenizer.*`, tensors under llama.cpp's
//! names with Q and K rows in its rotary order, matrices in the type asked (F32, F16,
//! Q8_0, Q4_0, Q4_1, quantised as ggml's reference code does) and vectors in F32.
//!
//! Files are written whole or not at all ([`crate::atomic::write`]); one carries
//! `tchlab.written_by`, and only such a file is ever replaced by a later save.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::chat::Template;
use crate::error::{Error, Result};
use crate::formats::gguf::{self, GgufFamily, MetaValue, Metadata};
use crate::formats::quant::{self, GgmlType};
use crate::models::Model;
use crate::tokenize::Tokenizer;

/// What [`save`] wrote.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Written {
    /// The matrices' type (`q8_0`, ...).
    pub kind: String,
    /// Tensors written.
    pub tensors: usize,
    /// The file's size.
    pub bytes: u64,
    /// Matrices kept in F32 because their rows do not split into the type's blocks.
    pub kept_f32: Vec<String>,
}

/// The key that marks a GGUF file as one tchlab wrote.
const WRITTEN_BY: &str = "tchlab.written_by";

/// Where tensor data starts and each tensor's data is aligned (GGUF's default).
const ALIGNMENT: u64 = 32;

/// Writes `model` to the GGUF file `path` with its matrices in `kind`. `source` is the
/// GGUF file the model came from, if it did: its pre-tokenizer and BOS setting carry over.
/// Refused, writing nothing, for a family GGUF has no form for here, LoRA adapters not
/// merged, a tokenizer that is not byte-level BPE, or a target tchlab did not write.
pub fn save(model: &Model, tokenizer: Option<&Tokenizer>, template: Option<&Template>, source: Option<&Path>, path: &Path, kind: GgmlType) -> Result<Written> {
    check_target(path)?;
    let family = model.config().family();
    let Some(gguf) = family.gguf else {
        let written: Vec<&str> = crate::models::FAMILIES.iter().filter(|f| f.gguf.is_some()).map(|f| f.name).collect();
        return Err(Error::Invalid(format!(
            "GGUF files are written for {} models; this is a {} model: `%save DIR --hf` writes the Hugging Face files",
            written.join(", "),
            family.name
        )));
    };
    if model.adapters().is_some() {
        return Err(Error::Invalid("the model has LoRA adapters, which GGUF has no place for here: `%lora merge` folds them into the weights first".into()));
    }
    let tokenizer = tokenizer.ok_or_else(|| Error::Invalid("the model has no tokenizer, which a GGUF file must carry: `%load` one with the model".into()))?;
    let config = super::hf_config(model);
    let mut values = (gguf.metadata)(&config)?;
    let arch = match &values[0] {
        (key, MetaValue::Str(arch)) if key == "general.architecture" => arch.clone(),
        _ => unreachable!("a family's GGUF metadata starts with general.architecture"),
    };
    values.extend(tokenizer_metadata(tokenizer, template, source, &config, model.config().vocab_size())?);
    let file_type = match kind {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        _ => 7,
    };
    let name = path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    values.extend([
        ("general.name".to_string(), MetaValue::Str(name)),
        ("general.file_type".into(), MetaValue::Uint(file_type)),
        ("general.quantization_version".into(), MetaValue::Uint(2)),
        (WRITTEN_BY.into(), MetaValue::Str(format!("tchlab {}", env!("CARGO_PKG_VERSION")))),
    ]);
    let meta = Metadata { path: path.to_path_buf(), version: 3, values: values.iter().cloned().collect(), tensors: vec![] };
    let tied = config["tie_word_embeddings"] == true;
    let mut tensors = Vec::new();
    let mut kept_f32 = Vec::new();
    for (hf_name, t) in super::hf_state_dict(model)? {
        if tied && hf_name == "lm_head.weight" {
            continue;
        }
        let name = (gguf.gguf_name)(&hf_name).ok_or_else(|| Error::Invalid(format!("the model's tensor `{hf_name}` has no llama.cpp name")))?;
        let tensor_kind = match t.size().as_slice() {
            [_, cols] if *cols as u64 % kind.block_size() == 0 => kind,
            [_, _] => {
                kept_f32.push(name.clone());
                GgmlType::F32
            }
            _ => GgmlType::F32,
        };
        tensors.push(Planned { name, hf_name, tensor: t, kind: tensor_kind });
    }
    crate::interrupt::trip("save-gguf");
    let written = write_file(path, &values, &tensors, |planned| tensor_bytes(gguf, &arch, &meta, planned))?;
    let kind = quant::WRITABLE.iter().find(|(_, k)| *k == kind).map_or("?", |(n, _)| n);
    Ok(Written { kind: kind.into(), tensors: tensors.len(), bytes: written, kept_f32 })
}

/// A tensor to write.
struct Planned {
    /// llama.cpp's name.
    name: String,
    hf_name: String,
    /// The model's tensor (shared with it, not copied).
    tensor: Tensor,
    kind: GgmlType,
}

impl Planned {
    fn bytes(&self) -> u64 {
        self.tensor.numel() as u64 / self.kind.block_size() * self.kind.block_bytes()
    }
}

/// The bytes of one tensor, made when it is written (so that only one tensor's copy is
/// held at a time): in llama.cpp's row order, quantised.
fn tensor_bytes(gguf: &GgufFamily, arch: &str, meta: &Metadata, planned: &Planned) -> Result<Vec<u8>> {
    crate::interrupt::check("saving the GGUF file")?;
    let mut t = planned.tensor.f_to_kind(Kind::Float)?.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    if let Some(heads) = (gguf.unpermute)(arch, &planned.name, meta) {
        t = gguf::permute(&t, heads).map_err(|e| Error::Invalid(format!("tensor `{}`: {e}", planned.hf_name)))?;
    }
    let shift = (gguf.shift)(&planned.name);
    if shift != 0.0 {
        t = t.f_add_scalar(shift)?;
    }
    let values = Vec::<f32>::try_from(t.f_flatten(0, -1)?)?;
    quant::quantize(planned.kind, &values).map_err(|e| Error::Invalid(format!("tensor `{}`: {e}", planned.hf_name)))
}

/// The `tokenizer.*` keys: a byte-level BPE written from the tokenizer, or the
/// SentencePiece vocabulary of the GGUF file the model came from, carried over as it is
/// (its scores and token types, which a SentencePiece vocabulary cannot be rebuilt
/// without; such a tokenizer is never retrained in the lab).
fn tokenizer_metadata(
    tokenizer: &Tokenizer,
    template: Option<&Template>,
    source: Option<&Path>,
    config: &serde_json::Value,
    vocab: i64,
) -> Result<Vec<(String, MetaValue)>> {
    let source = source.filter(|p| gguf::is_gguf(p)).and_then(|p| gguf::read_metadata(p).ok());
    if let Some(meta) = source.as_ref().filter(|m| m.string("tokenizer.ggml.model").ok() == Some("llama")) {
        let tokens = meta.strings("tokenizer.ggml.tokens")?.len();
        if tokens as i64 != vocab || tokenizer.vocab_size() != tokens {
            return Err(Error::Invalid(format!(
                "the SentencePiece vocabulary of {} has {tokens} tokens, the tokenizer {} and the model {vocab} embeddings: it is not this model's any more",
                meta.path.display(),
                tokenizer.vocab_size()
            )));
        }
        let mut values: Vec<(String, MetaValue)> = meta
            .values
            .iter()
            .filter(|(key, _)| key.starts_with("tokenizer.") && *key != "tokenizer.chat_template")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(t) = template {
            values.push(("tokenizer.chat_template".into(), MetaValue::Str(t.source.clone())));
        }
        return Ok(values);
    }
    let v = tokenizer.gguf_vocabulary(vocab.max(0) as usize)?;
    let pre = match source.as_ref().and_then(|m| m.string("tokenizer.ggml.pre").ok()) {
        Some(pre) => pre.to_string(),
        None if v.gpt2_pre_tokenizer => "gpt-2".into(),
        None => {
            return Err(Error::Invalid(
                "the tokenizer splits text before BPE in a way tchlab cannot name for llama.cpp (it names GPT-2's byte-level split, or carries over the pre-tokenizer of the GGUF file the model came from)"
                    .into(),
            ))
        }
    };
    let strings = |items: Vec<String>| MetaValue::Array(items.into_iter().map(MetaValue::Str).collect());
    let mut values = vec![
        ("tokenizer.ggml.model".to_string(), MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), MetaValue::Str(pre)),
        ("tokenizer.ggml.tokens".into(), strings(v.tokens)),
        ("tokenizer.ggml.token_type".into(), MetaValue::Array(v.types.into_iter().map(MetaValue::Int).collect())),
        ("tokenizer.ggml.merges".into(), strings(v.merges)),
    ];
    let first_id = |key: &str| match &config[key] {
        serde_json::Value::Array(ids) => ids.first().and_then(serde_json::Value::as_u64),
        id => id.as_u64(),
    };
    for (config_key, gguf_key) in
        [("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id"), ("pad_token_id", "tokenizer.ggml.padding_token_id")]
    {
        if let Some(id) = first_id(config_key).filter(|&id| id < vocab as u64) {
            values.push((gguf_key.into(), MetaValue::Uint(id)));
        }
    }
    let add_bos = source.as_ref().and_then(|m| m.bool("tokenizer.ggml.add_bos_token").ok()).unwrap_or(false);
    values.push(("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(add_bos)));
    if let Some(t) = template {
        values.push(("tokenizer.chat_template".into(), MetaValue::Str(t.source.clone())));
    }
    Ok(values)
}

/// A save may replace `path` only when it does not exist or is a GGUF file tchlab wrote.
fn check_target(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
        Ok(m) if m.is_dir() => Err(Error::format(path, "is a directory: a GGUF save writes one file; choose a file name ending in .gguf")),
        Ok(_) if gguf::read_metadata(path).is_ok_and(|m| m.values.contains_key(WRITTEN_BY)) => Ok(()),
        Ok(_) => Err(Error::format(path, "exists and is not a GGUF file tchlab wrote, so nothing was written: choose a new file name, or remove it")),
    }
}

/// Writes the header, then each tensor's bytes from `data`, aligned; returns the size.
fn write_file(path: &Path, values: &[(String, MetaValue)], tensors: &[Planned], mut data: impl FnMut(&Planned) -> Result<Vec<u8>>) -> Result<u64> {
    let mut header = Vec::new();
    header.extend_from_slice(b"GGUF");
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(values.len() as u64).to_le_bytes());
    for (key, value) in values {
        put_string(&mut header, key);
        put_value(&mut header, value, true);
    }
    let mut offset = 0u64;
    for t in tensors {
        put_string(&mut header, &t.name);
        let shape = t.tensor.size();
        header.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            header.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        header.extend_from_slice(&t.kind.id().to_le_bytes());
        header.extend_from_slice(&offset.to_le_bytes());
        offset += t.bytes().div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    header.resize((header.len() as u64).div_ceil(ALIGNMENT) as usize * ALIGNMENT as usize, 0);
    let total = header.len() as u64 + offset;
    let mut failure = None;
    crate::atomic::write(path, |w| {
        w.write_all(&header)?;
        for t in tensors {
            let bytes = match data(t) {
                Ok(b) => b,
                Err(e) => {
                    failure = Some(e);
                    return Err(std::io::Error::other("stopped"));
                }
            };
            w.write_all(&bytes)?;
            w.write_all(&vec![0u8; (bytes.len() as u64).next_multiple_of(ALIGNMENT) as usize - bytes.len()])?;
        }
        Ok(())
    })
    .map_err(|e| failure.take().unwrap_or(e))?;
    Ok(total)
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// GGUF's type id of a value as tchlab writes it: integers as 32 bits where they fit.
fn type_id(value: &MetaValue) -> u32 {
    match value {
        MetaValue::Uint(u) if *u <= u64::from(u32::MAX) => 4,
        MetaValue::Uint(_) => 10,
        MetaValue::Int(i) if i32::try_from(*i).is_ok() => 5,
        MetaValue::Int(_) => 11,
        MetaValue::Float(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::Str(_) => 8,
        MetaValue::Array(_) => 9,
    }
}

fn put_value(out: &mut Vec<u8>, value: &MetaValue, with_type: bool) {
    let id = type_id(value);
    if with_type {
        out.extend_from_slice(&id.to_le_bytes());
    }
    match value {
        MetaValue::Uint(u) if id == 4 => out.extend_from_slice(&(*u as u32).to_le_bytes()),
        MetaValue::Uint(u) => out.extend_from_slice(&u.to_le_bytes()),
        MetaValue::Int(i) if id == 5 => out.extend_from_slice(&(*i as i32).to_le_bytes()),
        MetaValue::Int(i) => out.extend_from_slice(&i.to_le_bytes()),
        MetaValue::Float(f) => out.extend_from_slice(&(*f as f32).to_le_bytes()),
        MetaValue::Bool(b) => out.push(u8::from(*b)),
        MetaValue::Str(s) => put_string(out, s),
        MetaValue::Array(items) => {
            // One item type for the whole array: the widest any item needs.
            let item = items.iter().map(type_id).max().unwrap_or(8);
            out.extend_from_slice(&item.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for v in items {
                match (v, item) {
                    (MetaValue::Int(i), 11) => out.extend_from_slice(&i.to_le_bytes()),
                    (MetaValue::Uint(u), 10) => out.extend_from_slice(&u.to_le_bytes()),
                    _ => put_value(out, v, false),
                }
            }
        }
    }
}
