//! Weights kept in fewer bits, computed with the kernels of the libtorch tchlab links:
//! what `%quantize` puts in a linear layer's slot ([`super::linear`]), so that every
//! family's attention, MLP and head compute with it without knowing.
//!
//! | format | storage | kernel |
//! | --- | --- | --- |
//! | `int8` | int8 `(out, in)`, one scale per output (symmetric) | `_weight_int8pack_mm` (bf16 activations: vectorised on x86 for bf16 only) |
//! | `int4` | 4-bit codes in groups of 32, 64 or 128 inputs, a scale and a zero each (`w = (q − 8)·scale + zero`) | `_weight_int4pack_mm_for_cpu` (tinygemm's layout, which depends on the CPU's instruction set: packed on the machine that runs it, never saved) |
//! | `fp16` | float16 | fbgemm's fp16 GEMM (`fbgemm_linear_fp16_weight_fp32_activation`, through the small C++ shim `shim.cpp`: tch binds no `fbgemm_*` op) |
//!
//! Facts measured for SmolLM2's shapes: `../shared/NOTES-quantisation.md`. Each packed
//! layer also keeps what dequantises it exactly as its kernel reads it (the int8 matrix
//! and its bfloat16 scales; the int4 codes two to a byte and their bfloat16 scales and
//! zeros; the float16 matrix), which the analyses that split a projection, and the
//! gradient of LoRA adapters trained over a quantised base (QLoRA), need.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::lora::Targets;
use super::Model;
use crate::error::{invalid, Result};

/// How a layer's weight is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", tag = "format")]
pub enum Format {
    /// float16, fbgemm's GEMM.
    Fp16,
    /// int8, one scale per output channel.
    Int8,
    /// int4 in groups of `group` inputs, a scale and a zero per group.
    Int4 {
        /// Inputs per group: 32, 64 or 128.
        group: i64,
    },
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Format::Fp16 => write!(f, "fp16"),
            Format::Int8 => write!(f, "int8"),
            Format::Int4 { group } => write!(f, "int4 (groups of {group})"),
        }
    }
}

/// The group sizes the int4 kernel takes.
pub const INT4_GROUPS: &[i64] = &[32, 64, 128];

/// A weight in a quantised format, ready for its kernel.
pub struct Packed {
    /// Its format.
    pub format: Format,
    /// `(out, in)`.
    pub shape: [i64; 2],
    kernel: Kernel,
}

enum Kernel {
    Fp16 { handle: Tensor, half: Tensor },
    Int8 { q: Tensor, scales: Tensor },
    Int4 { packed: Tensor, scale_zero: Tensor, codes: Tensor, group: i64 },
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({}, {:?})", self.format, self.shape)
    }
}

impl Packed {
    /// `weight (out, in)` (any float kind) in `format`; the message names what does not
    /// fit the kernel.
    pub fn pack(weight: &Tensor, format: Format) -> Result<Packed> {
        let (n, k) = match weight.size().as_slice() {
            &[n, k] => (n, k),
            other => return invalid!("a weight to quantise is a matrix; this one has shape {other:?}"),
        };
        if weight.device() != Device::Cpu {
            return invalid!("quantised weights run on the CPU kernels of libtorch here; move the model to the CPU first (`%device cpu`)");
        }
        let w = weight.f_detach()?.f_to_kind(Kind::Float)?.f_contiguous()?;
        let kernel = match format {
            Format::Fp16 => {
                let half = w.f_to_kind(Kind::Half)?;
                Kernel::Fp16 { handle: crate::shim::pack_fp16(&w)?, half }
            }
            Format::Int8 => {
                // Symmetric per output channel; the kernel reads bfloat16 scales, so the
                // codes are made with those.
                let scales = w.f_abs()?.f_amax([1].as_slice(), false)?.f_clamp_min(1e-12)?.f_div_scalar(127.0)?.f_to_kind(Kind::BFloat16)?;
                let q = w.f_div(&scales.f_to_kind(Kind::Float)?.f_unsqueeze(1)?)?.f_round()?.f_clamp(-128.0, 127.0)?.f_to_kind(Kind::Int8)?;
                Kernel::Int8 { q, scales }
            }
            Format::Int4 { group } => {
                if !INT4_GROUPS.contains(&group) {
                    return invalid!("--group must be one of 32, 64 or 128 (the int4 kernel's), got {group}");
                }
                if k % group != 0 {
                    return invalid!("{k} inputs do not divide into groups of {group}");
                }
                if n % 16 != 0 {
                    return invalid!("the int4 kernel needs outputs in multiples of 16; this layer has {n}");
                }
                // Asymmetric per group: q = round((w − min) / scale) in 0..15, and the kernel's
                // w = (q − 8)·scale + zero with zero = min + 8·scale.
                let g = w.f_view([n, k / group, group])?;
                let lo = g.f_amin([2].as_slice(), true)?;
                let hi = g.f_amax([2].as_slice(), true)?;
                let scale = hi.f_sub(&lo)?.f_div_scalar(15.0)?.f_clamp_min(1e-12)?.f_to_kind(Kind::BFloat16)?.f_to_kind(Kind::Float)?;
                let zero = lo.f_add(&scale.f_mul_scalar(8.0)?)?.f_to_kind(Kind::BFloat16)?.f_to_kind(Kind::Float)?;
                // Codes against the bfloat16 scale and zero the kernel will use.
                let q = g.f_sub(&zero)?.f_div(&scale)?.f_add_scalar(8.0)?.f_round()?.f_clamp(0.0, 15.0)?.f_view([n, k])?;
                int4_kernel(&q, &scale.f_view([n, k / group])?, &zero.f_view([n, k / group])?, group, [n, k])?
            }
        };
        Ok(Packed { format, shape: [n, k], kernel })
    }

    /// An int4 weight from codes `q (out, in)` in 0..15 and per-group `scale`, `zero`
    /// `(out, in / group)`: `w = (q − 8)·scale + zero`. GGUF's Q4_0 and Q4_1 blocks are
    /// exactly this with groups of 32 (float16 scales, which bfloat16 holds within its
    /// rounding).
    pub fn from_int4(q: &Tensor, scale: &Tensor, zero: &Tensor, group: i64) -> Result<Packed> {
        let (n, k) = q.size2()?;
        if let Some(why) = unfit([n, k], Format::Int4 { group }) {
            return invalid!("{why}");
        }
        Ok(Packed { format: Format::Int4 { group }, shape: [n, k], kernel: int4_kernel(q, scale, zero, group, [n, k])? })
    }

    /// `x (.., in) → (.., out)` in `x`'s kind, with `bias` when given.
    pub fn matmul(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let [n, k] = self.shape;
        let kind = x.kind();
        let mut out_shape = x.size();
        let rows: i64 = out_shape[..out_shape.len() - 1].iter().product();
        *out_shape.last_mut().expect("at least one dimension") = n;
        let y = match &self.kernel {
            Kernel::Fp16 { handle, .. } => crate::shim::linear_fp16(&x.f_reshape([rows, k])?.f_to_kind(Kind::Float)?.f_contiguous()?, handle)?,
            Kernel::Int8 { q, scales } => x.f_reshape([rows, k])?.f_to_kind(Kind::BFloat16)?.f_contiguous()?.f_internal_weight_int8pack_mm(q, scales)?,
            Kernel::Int4 { packed, scale_zero, group, .. } => {
                x.f_reshape([rows, k])?.f_to_kind(Kind::BFloat16)?.f_contiguous()?.f_internal_weight_int4pack_mm_for_cpu(packed, *group, scale_zero)?
            }
        };
        let y = y.f_to_kind(kind)?.f_reshape(out_shape)?;
        Ok(match bias {
            Some(b) => y.f_add(&b.f_to_kind(kind)?)?,
            None => y,
        })
    }

    /// The weight `(out, in)` in float32, exactly as the kernel reads it.
    pub fn dequantize(&self) -> Result<Tensor> {
        let [n, k] = self.shape;
        Ok(match &self.kernel {
            Kernel::Fp16 { half, .. } => half.f_to_kind(Kind::Float)?,
            Kernel::Int8 { q, scales } => q.f_to_kind(Kind::Float)?.f_mul(&scales.f_to_kind(Kind::Float)?.f_unsqueeze(1)?)?,
            Kernel::Int4 { scale_zero, codes, group, .. } => {
                let low = codes.f_bitwise_and(15)?;
                let high = codes.f_bitwise_right_shift_tensor_scalar(4)?;
                let q = Tensor::f_stack(&[low, high], 2)?.f_view([n, k / group, *group])?.f_to_kind(Kind::Float)?;
                let sz = scale_zero.f_to_kind(Kind::Float)?.f_permute([1, 0, 2])?; // (out, in/g, 2)
                let (scale, zero) = (sz.f_select(2, 0)?.f_unsqueeze(2)?, sz.f_select(2, 1)?.f_unsqueeze(2)?);
                q.f_sub_scalar(8.0)?.f_mul(&scale)?.f_add(&zero)?.f_view([n, k])?
            }
        })
    }

    /// The int4 codes `(out, in)` in 0..15 and per-group `(scale, zero)` `(out, in/g)`,
    /// float32, when the weight is int4 (what GGUF export writes back as blocks).
    pub fn int4_parts(&self) -> Option<Result<(Tensor, Tensor, Tensor)>> {
        let Kernel::Int4 { scale_zero, codes, group, .. } = &self.kernel else { return None };
        let [n, k] = self.shape;
        Some((|| {
            let q = Tensor::f_stack(&[codes.f_bitwise_and(15)?, codes.f_bitwise_right_shift_tensor_scalar(4)?], 2)?.f_view([n, k])?;
            let sz = scale_zero.f_to_kind(Kind::Float)?.f_permute([1, 0, 2])?.f_contiguous()?;
            let _ = group;
            Ok((q, sz.f_select(2, 0)?, sz.f_select(2, 1)?))
        })())
    }

    /// The tensors its kernel reads, by name (`q`, `scales`; `packed`, `scale_zero`), for
    /// a caller that hands them to the same kernel elsewhere; fbgemm's handle has none.
    pub fn kernel_tensors(&self) -> Vec<(&'static str, Tensor)> {
        match &self.kernel {
            Kernel::Fp16 { .. } => vec![],
            Kernel::Int8 { q, scales } => vec![("q", q.shallow_clone()), ("scales", scales.shallow_clone())],
            Kernel::Int4 { packed, scale_zero, .. } => vec![("packed", packed.shallow_clone()), ("scale_zero", scale_zero.shallow_clone())],
        }
    }

    /// Bytes its kernel reads: what computing with it costs in memory traffic. (A
    /// packed layer also keeps what dequantises it — the int4 codes, a float16 copy —
    /// and the float weight it was packed from stays in the model.)
    pub fn bytes(&self) -> i64 {
        let size = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as i64;
        let [n, k] = self.shape;
        match &self.kernel {
            // fbgemm's packed matrix is an opaque handle holding n·k float16 values.
            Kernel::Fp16 { .. } => 2 * n * k,
            Kernel::Int8 { q, scales } => size(q) + size(scales),
            Kernel::Int4 { packed, scale_zero, .. } => size(packed) + size(scale_zero),
        }
    }
}

fn int4_kernel(q: &Tensor, scale: &Tensor, zero: &Tensor, group: i64, [n, k]: [i64; 2]) -> Result<Kernel> {
    let q32 = q.f_to_kind(Kind::Int)?.f_contiguous()?;
    let packed = q32.f_internal_convert_weight_to_int4pack_for_cpu(1)?;
    let scale_zero = Tensor::f_stack(&[scale.f_t_copy()?, zero.f_t_copy()?], 2)?.f_to_kind(Kind::BFloat16)?.f_contiguous()?; // (in/g, out, 2)
    let q8 = q.f_to_kind(Kind::Uint8)?.f_view([n, k / 2, 2])?;
    let codes = q8.f_select(2, 0)?.f_bitwise_or_tensor(&q8.f_select(2, 1)?.f_bitwise_left_shift_tensor_scalar(4)?)?.f_contiguous()?; // (out, in/2)
    Ok(Kernel::Int4 { packed, scale_zero, codes, group })
}

/// Why a matrix cannot be quantised here, or `None`.
pub fn unfit(shape: [i64; 2], format: Format) -> Option<String> {
    let [n, k] = shape;
    match format {
        Format::Int4 { group } if k % group != 0 => Some(format!("{k} inputs do not divide into groups of {group}")),
        Format::Int4 { .. } if n % 16 != 0 => Some(format!("the int4 kernel needs outputs in multiples of 16, and it has {n}")),
        _ => None,
    }
}

/// What `%quantize` does: a format, and the layers left in float.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The format.
    pub format: Format,
    /// Layers kept in float (names or a pattern, as LoRA's targets are read).
    pub skip: Option<Targets>,
}

/// One layer after `%quantize`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct QuantizedLayer {
    /// Its module path.
    pub layer: String,
    /// `(out, in)`.
    pub shape: [i64; 2],
    /// `fp16`, `int8`, `int4`, or `float` when it was kept as it was.
    pub format: String,
    /// Inputs per group (int4).
    pub group: Option<i64>,
    /// Bytes of its float weight.
    pub bytes_before: i64,
    /// Bytes it computes from now.
    pub bytes_after: i64,
    /// Why it stayed in float, when it did.
    pub kept: Option<String>,
}

impl Model {
    /// The format the model's layers compute in, when any is quantised.
    pub fn quantized(&self) -> Option<Format> {
        self.linears.iter().find_map(|l| l.slot().packed.as_ref().map(|p| p.format))
    }

    /// Packs every linear layer `plan` does not skip from its float weight (never from
    /// another packed form: `%quantize int8` after int4 starts again from the float
    /// weights). Everything is packed before anything changes; an interrupt or an error
    /// changes nothing. Layers the kernel cannot take (int4 needs outputs in multiples of
    /// 16) stay in float and say why; a group that does not divide a layer is an error
    /// naming the layer.
    pub fn quantize(&mut self, plan: &Plan) -> Result<Vec<QuantizedLayer>> {
        if self.device() != Device::Cpu {
            return invalid!("quantised layers run on the CPU kernels of libtorch in tchlab; move the model with `%device cpu` first");
        }
        let skip = match &plan.skip {
            Some(targets) => {
                let chosen: Vec<String> = self.layers_matching(targets, None)?.iter().map(|l| l.path.clone()).collect();
                if chosen.is_empty() {
                    return invalid!("--skip {targets} matches no linear layer of this model; its layers are named {}", self.layer_kinds().join(", "));
                }
                chosen
            }
            None => vec![],
        };
        if let Format::Int4 { group } = plan.format {
            if let Some(layer) = self.linears.iter().find(|l| !skip.contains(&l.path) && l.in_features % group != 0) {
                return invalid!(
                    "`{}` has {} inputs, which --group {group} does not divide; use a group that does (32, 64 or 128), or keep it in float with --skip {}",
                    layer.path,
                    layer.in_features,
                    layer.path.rsplit('.').next().unwrap_or(&layer.path)
                );
            }
        }
        let mut packs: Vec<(usize, Option<Packed>, QuantizedLayer)> = Vec::with_capacity(self.linears.len());
        for (i, layer) in self.linears.iter().enumerate() {
            crate::interrupt::check("quantising")?;
            let bytes_before = (layer.weight.numel() * layer.weight.kind().elt_size_in_bytes()) as i64;
            let mut row = QuantizedLayer {
                layer: layer.path.clone(),
                shape: [layer.out_features, layer.in_features],
                format: "float".into(),
                group: None,
                bytes_before,
                bytes_after: bytes_before,
                kept: None,
            };
            let why = if skip.contains(&layer.path) { Some("--skip".to_string()) } else { unfit(row.shape, plan.format) };
            if let Some(why) = why {
                row.kept = Some(why);
                packs.push((i, None, row));
                continue;
            }
            let packed = Packed::pack(&layer.weight, plan.format)?;
            row.format = match plan.format {
                Format::Fp16 => "fp16",
                Format::Int8 => "int8",
                Format::Int4 { .. } => "int4",
            }
            .into();
            row.group = match plan.format {
                Format::Int4 { group } => Some(group),
                _ => None,
            };
            row.bytes_after = packed.bytes();
            packs.push((i, Some(packed), row));
        }
        crate::interrupt::trip("quantize");
        // Everything is packed: from here on nothing fails.
        Ok(packs
            .into_iter()
            .map(|(i, packed, row)| {
                self.linears[i].slot().packed = packed;
                row
            })
            .collect())
    }

    /// Drops every packed weight: the layers compute with their float weights again, which
    /// never changed. Returns how many layers were quantised.
    pub fn dequantize(&mut self) -> Result<usize> {
        let count = self.linears.iter().filter(|l| l.slot().packed.take().is_some()).count();
        if count == 0 {
            return invalid!("the model is not quantised: there is nothing for `%quantize none` to give back");
        }
        Ok(count)
    }
}
