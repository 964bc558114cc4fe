//! ggml's tensor types and their dequantisation to float32, bit for bit as ggml's
//! `dequantize_row_*` and the `gguf` Python package compute them (same operations in
//! the same order, in float32); and quantisation to the types tchlab writes (F32, F16,
//! Q8_0, Q4_0, Q4_1), as ggml's reference `quantize_row_*_ref` computes it.
//!
//! Block layouts (ggml-common.h): legacy types hold 32 values per block, k-quants 256
//! in sub-blocks with 6-bit (Q4_K, Q5_K) or 8-bit (Q6_K) scales.

use half::{bf16, f16};

/// A ggml element type, by its id in GGUF files.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// 4-bit, one scale per 32 values.
    Q4_0,
    /// 4-bit, a scale and a minimum per 32 values.
    Q4_1,
    /// 5-bit, one scale per 32 values.
    Q5_0,
    /// 5-bit, a scale and a minimum per 32 values.
    Q5_1,
    /// 8-bit, one scale per 32 values.
    Q8_0,
    /// 4-bit k-quant: 256 values in 8 sub-blocks with 6-bit scales and minimums.
    Q4_K,
    /// 5-bit k-quant, laid out as Q4_K plus a high bit.
    Q5_K,
    /// 6-bit k-quant: 256 values in 16 sub-blocks with 8-bit scales.
    Q6_K,
}

/// Names of the ggml types tchlab knows of but does not dequantise, by id.
const UNSUPPORTED: &[(u32, &str)] = &[
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

/// The types tchlab reads, by their GGUF ids.
const IDS: [(u32, GgmlType); 11] = [
    (0, GgmlType::F32),
    (1, GgmlType::F16),
    (2, GgmlType::Q4_0),
    (3, GgmlType::Q4_1),
    (6, GgmlType::Q5_0),
    (7, GgmlType::Q5_1),
    (8, GgmlType::Q8_0),
    (12, GgmlType::Q4_K),
    (13, GgmlType::Q5_K),
    (14, GgmlType::Q6_K),
    (30, GgmlType::BF16),
];

const K: usize = 256;

impl GgmlType {
    /// The type of a GGUF type id; the error names it and lists what loads.
    pub fn from_id(id: u32) -> Result<Self, String> {
        if let Some((_, kind)) = IDS.iter().find(|(i, _)| *i == id) {
            return Ok(*kind);
        }
        let known = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K";
        Err(match UNSUPPORTED.iter().find(|(i, _)| *i == id) {
            Some((_, name)) => format!("type {name} (ggml type {id}) is not one tchlab dequantises; it reads {known}"),
            None => format!("ggml type {id} is unknown; tchlab reads {known}"),
        })
    }

    /// Its id in GGUF files.
    pub fn id(self) -> u32 {
        IDS.iter().find(|(_, k)| *k == self).expect("every type has an id").0
    }

    /// Values per block.
    pub fn block_size(self) -> u64 {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => K as u64,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
        }
    }
}

fn half(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K/Q5_K block (`get_scale_min_k4`).
fn scale_min(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        (f32::from(q[j] & 63), f32::from(q[j + 4] & 63))
    } else {
        (f32::from((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)), f32::from((q[j + 4] >> 4) | ((q[j] >> 6) << 4)))
    }
}

/// Dequantises one block into `y` (`block_size` values).
fn block(kind: GgmlType, x: &[u8], y: &mut [f32]) {
    match kind {
        GgmlType::F32 => y[0] = f32::from_le_bytes([x[0], x[1], x[2], x[3]]),
        GgmlType::F16 => y[0] = half(x),
        GgmlType::BF16 => y[0] = bf16::from_le_bytes([x[0], x[1]]).to_f32(),
        GgmlType::Q8_0 => {
            let d = half(x);
            for (v, &q) in y.iter_mut().zip(&x[2..34]) {
                *v = d * f32::from(q as i8);
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let d = half(x);
            let (m, qs) = if kind == GgmlType::Q4_1 { (half(&x[2..]), &x[4..20]) } else { (0.0, &x[2..18]) };
            for (j, &q) in qs.iter().enumerate() {
                let (lo, hi) = (f32::from(q & 0xF), f32::from(q >> 4));
                if kind == GgmlType::Q4_1 {
                    y[j] = d * lo + m;
                    y[j + 16] = d * hi + m;
                } else {
                    y[j] = d * (lo - 8.0);
                    y[j + 16] = d * (hi - 8.0);
                }
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let d = half(x);
            let (m, rest) = if kind == GgmlType::Q5_1 { (half(&x[2..]), &x[4..]) } else { (0.0, &x[2..]) };
            let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            for (j, &q) in rest[4..20].iter().enumerate() {
                let lo = (q & 0xF) | ((((qh >> j) << 4) & 0x10) as u8);
                let hi = (q >> 4) | (((qh >> (j + 12)) & 0x10) as u8);
                if kind == GgmlType::Q5_1 {
                    y[j] = d * f32::from(lo) + m;
                    y[j + 16] = d * f32::from(hi) + m;
                } else {
                    y[j] = d * (f32::from(lo) - 16.0);
                    y[j + 16] = d * (f32::from(hi) - 16.0);
                }
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (d, dmin) = (half(x), half(&x[2..]));
            let scales = &x[4..16];
            let (qh, ql) = if kind == GgmlType::Q5_K { (&x[16..48], &x[48..176]) } else { (&[][..], &x[16..144]) };
            for chunk in 0..4 {
                let (sc1, m1) = scale_min(2 * chunk, scales);
                let (sc2, m2) = scale_min(2 * chunk + 1, scales);
                let (d1, dm1, d2, dm2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
                let q = &ql[32 * chunk..32 * chunk + 32];
                let out = &mut y[64 * chunk..64 * chunk + 64];
                for l in 0..32 {
                    let (mut lo, mut hi) = (q[l] & 0xF, q[l] >> 4);
                    if kind == GgmlType::Q5_K {
                        lo |= ((qh[l] >> (2 * chunk)) & 1) << 4;
                        hi |= ((qh[l] >> (2 * chunk + 1)) & 1) << 4;
                    }
                    out[l] = d1 * f32::from(lo) - dm1;
                    out[l + 32] = d2 * f32::from(hi) - dm2;
                }
            }
        }
        GgmlType::Q6_K => {
            let (ql, qh, sc) = (&x[0..128], &x[128..192], &x[192..208]);
            let d = half(&x[208..]);
            for half_block in 0..2 {
                let (ql, qh, sc) = (&ql[64 * half_block..], &qh[32 * half_block..], &sc[8 * half_block..]);
                let out = &mut y[128 * half_block..128 * half_block + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                    let scale = |i: usize| d * f32::from(sc[is + i] as i8);
                    out[l] = scale(0) * f32::from(q1);
                    out[l + 32] = scale(2) * f32::from(q2);
                    out[l + 64] = scale(4) * f32::from(q3);
                    out[l + 96] = scale(6) * f32::from(q4);
                }
            }
        }
    }
}

/// Dequantises `raw` (whole blocks of `kind`) to float32, on every core for large tensors.
pub fn dequantize(kind: GgmlType, raw: &[u8]) -> Result<Vec<f32>, String> {
    let (bs, bb) = (kind.block_size() as usize, kind.block_bytes() as usize);
    if raw.len() % bb != 0 {
        return Err(format!("{} bytes are not whole {kind:?} blocks of {bb} bytes", raw.len()));
    }
    let mut out = vec![0f32; raw.len() / bb * bs];
    blockwise(raw, bb, &mut out, bs, |x, y| block(kind, x, y));
    Ok(out)
}

/// Runs `each` on every block of `input` (`in_block` long) and its block of `output`
/// (`out_block` long), on every core for large tensors.
fn blockwise<A: Sync, B: Send>(input: &[A], in_block: usize, output: &mut [B], out_block: usize, each: impl Fn(&[A], &mut [B]) + Sync) {
    let blocks = input.len() / in_block;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16);
    let per_thread = blocks.div_ceil(threads).max(1 << 12);
    let each = &each;
    std::thread::scope(|scope| {
        for (x, y) in input.chunks(per_thread * in_block).zip(output.chunks_mut(per_thread * out_block)) {
            scope.spawn(move || {
                for (xb, yb) in x.chunks_exact(in_block).zip(y.chunks_exact_mut(out_block)) {
                    each(xb, yb);
                }
            });
        }
    });
}

/// The types [`quantize`] writes, by the names llama.cpp's tools give them.
pub const WRITABLE: [(&str, GgmlType); 5] =
    [("f32", GgmlType::F32), ("f16", GgmlType::F16), ("q8_0", GgmlType::Q8_0), ("q4_0", GgmlType::Q4_0), ("q4_1", GgmlType::Q4_1)];

/// Quantises `values` (a whole number of `kind`'s blocks) as ggml's reference
/// `quantize_row_*_ref` does, on every core for large tensors.
pub fn quantize(kind: GgmlType, values: &[f32]) -> Result<Vec<u8>, String> {
    let (bs, bb) = (kind.block_size() as usize, kind.block_bytes() as usize);
    if !WRITABLE.iter().any(|(_, k)| *k == kind) {
        return Err(format!("tchlab writes {}, not {kind:?}", WRITABLE.map(|(n, _)| n).join(", ")));
    }
    if values.len() % bs != 0 {
        return Err(format!("{} values are not whole {kind:?} blocks of {bs}", values.len()));
    }
    let mut out = vec![0u8; values.len() / bs * bb];
    blockwise(values, bs, &mut out, bb, |x, y| quantize_block(kind, x, y));
    Ok(out)
}

/// Quantises one block of `x` into `y`.
fn quantize_block(kind: GgmlType, x: &[f32], y: &mut [u8]) {
    let half_bytes = |v: f32| f16::from_f32(v).to_le_bytes();
    match kind {
        GgmlType::F32 => y.copy_from_slice(&x[0].to_le_bytes()),
        GgmlType::F16 => y.copy_from_slice(&half_bytes(x[0])),
        GgmlType::Q8_0 => {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            y[..2].copy_from_slice(&half_bytes(d));
            for (q, v) in y[2..].iter_mut().zip(x) {
                *q = (v * id).round() as i8 as u8;
            }
        }
        GgmlType::Q4_0 => {
            // The value of largest magnitude, with its sign, maps to -8.
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in x {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            y[..2].copy_from_slice(&half_bytes(d));
            let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
            for j in 0..16 {
                y[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
            }
        }
        GgmlType::Q4_1 => {
            let min = x.iter().fold(f32::MAX, |m, &v| if v < m { v } else { m });
            let max = x.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            y[..2].copy_from_slice(&half_bytes(d));
            y[2..4].copy_from_slice(&half_bytes(min));
            let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
            for j in 0..16 {
                y[4 + j] = q(x[j]) | (q(x[j + 16]) << 4);
            }
        }
        other => unreachable!("{other:?} is not in WRITABLE"),
    }
}
