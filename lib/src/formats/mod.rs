//! File formats, read and written without knowing any model: safetensors, `torch.save`
//! pickles, llama.cpp's GGUF and its quantisation types. The
//! families (`crate::models`) declare how their weights are named in them; the loader
//! (`crate::checkpoint`) finds the files, picks the family and assembles a model.

pub mod gguf;
pub mod pickle;
pub mod quant;
pub mod safetensors;
