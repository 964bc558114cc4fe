//! Making a model small: `%quantize` packs its linear layers in fewer bits
//! ([`crate::models::quantize`]) and shows what that saves and costs.

use schemars::JsonSchema;
use serde::Serialize;

use super::model::group_digits;
use super::{flag, option, pos, returns, Command};
use crate::limits::format_bytes;
use crate::models::lora::Targets;
use crate::models::quantize::{Format, Plan, QuantizedLayer, INT4_GROUPS};
use crate::session::output::{Bundle, CellError, Table};
use crate::session::parse::Args;
use crate::session::{Ctx, Session};

pub const QUANTIZE: Command = Command {
    name: "quantize",
    summary: "compute with the linear layers' weights in int8, int4 or fp16 (`none` gives back the float weights, bit for bit)",
    args: &[
        pos("format", "int8 | int4 | fp16 | none").choices(&["int8", "int4", "fp16", "none"]),
        option("group", "N", "int4: inputs per group, 32, 64 or 128 (default 32)"),
        option("skip", "PATTERN", "layers kept in float: names such as lm_head,o_proj, or a regular expression over module paths"),
        flag("eval", "the validation loss and perplexity before and after, on the data loaded"),
    ],
    details: "int8: one scale per output channel (libtorch's _weight_int8pack_mm); int4: a scale and a zero per group of inputs \
              (_weight_int4pack_mm_for_cpu, tinygemm's layout, packed on this machine); fp16: fbgemm's fp16 GEMM. The int8 and int4 kernels \
              take bfloat16 activations; layers are packed from their float weights, which stay, so `%quantize none` is exact and a new \
              format never re-quantises a quantised one. The LM head is quantised like any layer (`--skip lm_head` keeps it); token \
              embeddings stay float. A quantised model trains only through LoRA adapters over it (QLoRA).",
    example: "%quantize int4 --group 32 --eval",
    returns: returns::<Quantized>(),
    run: quantize,
};

fn quantize(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let format = match args.get("format").expect("required") {
        "none" => {
            if args.get("group").is_some() || args.get("skip").is_some() {
                return Err(args.usage_error("`%quantize none` takes no --group or --skip: it gives back every float weight"));
            }
            None
        }
        "int8" => Some(Format::Int8),
        "fp16" => Some(Format::Fp16),
        _ => {
            let group: i64 = args.parse_as("group")?.unwrap_or(32);
            if !INT4_GROUPS.contains(&group) {
                return Err(args.usage_error(format!("--group must be 32, 64 or 128, got {group}")));
            }
            Some(Format::Int4 { group })
        }
    };
    if args.get("group").is_some() && !matches!(format, Some(Format::Int4 { .. })) {
        return Err(args.usage_error("--group is for int4"));
    }
    let skip = args.get("skip").map(Targets::parse).transpose()?;
    let eval = |s: &mut Session| -> Result<Option<crate::train::EvalMetrics>, CellError> {
        if !args.flag("eval") {
            return Ok(None);
        }
        let trainer = s.trainer.as_ref().ok_or_else(|| args.usage_error("--eval needs data to evaluate on: `%data ...` first"))?;
        Ok(Some(trainer.evaluate()?))
    };
    let before = eval(s)?;
    let layers = match format {
        None => {
            let count = s.change_model_in_place(|m| m.dequantize())?;
            let after = eval(s)?;
            let result =
                Quantized { format: "none".into(), layers: vec![], bytes_before: 0, bytes_after: 0, before: None, after: after.as_ref().map(Metrics::of) };
            ctx.returns(Bundle::text(format!("gave back the float weights of {count} layers, bit for bit")), &result);
            return Ok(());
        }
        Some(format) => s.change_model_in_place(|m| m.quantize(&Plan { format, skip: skip.clone() }))?,
    };
    let after = eval(s)?;
    let result = Quantized {
        format: args.get("format").expect("required").to_string(),
        bytes_before: layers.iter().map(|l| l.bytes_before).sum(),
        bytes_after: layers.iter().map(|l| l.bytes_after).sum(),
        layers,
        before: before.as_ref().map(Metrics::of),
        after: after.as_ref().map(Metrics::of),
    };
    ctx.returns(result.bundle(), &result);
    Ok(())
}

/// Loss and perplexity.
#[derive(Serialize, JsonSchema)]
pub struct Metrics {
    /// Validation loss.
    pub loss: f64,
    /// Its exponential.
    pub perplexity: Option<f64>,
}

impl Metrics {
    fn of(m: &crate::train::EvalMetrics) -> Metrics {
        Metrics { loss: m.loss, perplexity: m.perplexity }
    }
}

/// What `%quantize` returns.
#[derive(Serialize, JsonSchema)]
pub struct Quantized {
    /// `int8`, `int4`, `fp16` or `none`.
    pub format: String,
    /// Every linear layer: its format (or `float`, and why), its bytes before and after.
    pub layers: Vec<QuantizedLayer>,
    /// The linear layers' bytes before, in all.
    pub bytes_before: i64,
    /// And after.
    pub bytes_after: i64,
    /// With --eval: the validation loss and perplexity before.
    pub before: Option<Metrics>,
    /// And after.
    pub after: Option<Metrics>,
}

impl Quantized {
    fn bundle(&self) -> Bundle {
        // One row per kind of layer (`q_proj` in every block).
        let mut kinds: Vec<(String, usize, String, i64, i64)> = vec![];
        for l in &self.layers {
            let kind = l.layer.rsplit('.').next().unwrap_or(&l.layer).to_string();
            let format = match (&l.kept, l.group) {
                (Some(why), _) => format!("float ({why})"),
                (None, Some(g)) => format!("{} (groups of {g})", l.format),
                (None, None) => l.format.clone(),
            };
            match kinds.iter_mut().find(|k| k.0 == kind && k.2 == format) {
                Some(k) => {
                    k.1 += 1;
                    k.3 += l.bytes_before;
                    k.4 += l.bytes_after;
                }
                None => kinds.push((kind, 1, format, l.bytes_before, l.bytes_after)),
            }
        }
        let mut table = Table::new(["layer", "layers", "format", "float", "quantised"]);
        for (kind, count, format, before, after) in &kinds {
            table.row([kind.clone(), count.to_string(), format.clone(), format_bytes(*before as f64), format_bytes(*after as f64)]);
        }
        table.row([
            "total".into(),
            self.layers.len().to_string(),
            String::new(),
            format_bytes(self.bytes_before as f64),
            format_bytes(self.bytes_after as f64),
        ]);
        let mut head = format!(
            "{} linear layers: the weights they read, {} in float → {} ({:.1}× fewer bytes; the float weights stay, for `%quantize none`)",
            group_digits(self.layers.iter().filter(|l| l.kept.is_none()).count() as i64),
            format_bytes(self.bytes_before as f64),
            format_bytes(self.bytes_after as f64),
            self.bytes_before as f64 / self.bytes_after.max(1) as f64
        );
        if let (Some(b), Some(a)) = (&self.before, &self.after) {
            let ppl = |m: &Metrics| m.perplexity.map_or(String::new(), |p| format!(", perplexity {p:.3}"));
            head.push_str(&format!("\nvalidation loss {:.4}{} → {:.4}{}", b.loss, ppl(b), a.loss, ppl(a)));
        }
        table.bundle_under(&head)
    }
}
