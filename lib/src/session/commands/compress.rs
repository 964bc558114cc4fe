//! Making a model small: `%quantize` packs its linear layers in fewer bits
//! ([`crate::models::quantize`]), `%prune` zeroes their least useful weights
//! ([`crate::models::prune`]); each shows what that saves and costs.

use schemars::JsonSchema;
use serde::Serialize;

use super::model::group_digits;
use super::{flag, option, pos, returns, Command};
use crate::limits::format_bytes;
use crate::models::lora::Targets;
use crate::models::prune::{Method, Pattern, PrunedLayer};
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
    let before = evaluate_if_asked(s, args)?;
    let layers = match format {
        None => {
            let count = s.change_model_in_place(|m| m.dequantize())?;
            let after = evaluate_if_asked(s, args)?;
            let result = Quantized { format: "none".into(), layers: vec![], bytes_before: 0, bytes_after: 0, before: None, after };
            ctx.returns(Bundle::text(format!("gave back the float weights of {count} layers, bit for bit")), &result);
            return Ok(());
        }
        Some(format) => s.change_model_in_place(|m| m.quantize(&Plan { format, skip: skip.clone() }))?,
    };
    let after = evaluate_if_asked(s, args)?;
    let result = Quantized {
        format: args.get("format").expect("required").to_string(),
        bytes_before: layers.iter().map(|l| l.bytes_before).sum(),
        bytes_after: layers.iter().map(|l| l.bytes_after).sum(),
        layers,
        before,
        after,
    };
    ctx.returns(result.bundle(), &result);
    Ok(())
}

/// With `--eval`: the validation loss and perplexity on the current data.
fn evaluate_if_asked(s: &Session, args: &Args) -> Result<Option<Metrics>, CellError> {
    if !args.flag("eval") {
        return Ok(None);
    }
    let trainer = s.trainer.as_ref().ok_or_else(|| args.usage_error("--eval needs data to evaluate on: `%data ...` first"))?;
    let m = trainer.evaluate()?;
    Ok(Some(Metrics { loss: m.loss, perplexity: m.perplexity }))
}

/// The line that says how `--eval`'s loss moved, when there is one.
fn loss_change(before: &Option<Metrics>, after: &Option<Metrics>) -> String {
    let (Some(b), Some(a)) = (before, after) else { return String::new() };
    let ppl = |m: &Metrics| m.perplexity.map_or(String::new(), |p| format!(", perplexity {p:.3}"));
    format!("\nvalidation loss {:.4}{} → {:.4}{}", b.loss, ppl(b), a.loss, ppl(a))
}

/// `q_proj` for `model.layers.3.self_attn.q_proj`: the tables have a row per kind of layer.
fn layer_kind(path: &str) -> String {
    path.rsplit('.').next().unwrap_or(path).to_string()
}

/// Loss and perplexity.
#[derive(Serialize, JsonSchema)]
pub struct Metrics {
    /// Validation loss.
    pub loss: f64,
    /// Its exponential.
    pub perplexity: Option<f64>,
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
        let mut kinds: Vec<(String, usize, String, i64, i64)> = vec![];
        for l in &self.layers {
            let kind = layer_kind(&l.layer);
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
        head.push_str(&loss_change(&self.before, &self.after));
        table.bundle_under(&head)
    }
}

pub const PRUNE: Command = Command {
    name: "prune",
    summary: "zero the linear layers' least useful weights, by magnitude or by Wanda, unstructured or 2:4; they stay zero while training goes on",
    args: &[
        option("sparsity", "S", "the share of each layer's weights to zero, above 0 and below 1 (2:4: 0.5, the default)"),
        option("method", "M", "magnitude (the default) | wanda: |W| times the norm of each input feature over calibration data"),
        option("pattern", "N:M", "2:4: N zeros in every M consecutive inputs of a row, instead of anywhere"),
        option("calib", "N", "wanda: calibration batches of the training data (default 8)"),
        flag("eval", "the validation loss and perplexity before and after"),
    ],
    details: "Unstructured magnitude pruning compares a whole layer; Wanda (Sun et al. 2023) compares each output row, scoring |W_ij|·‖X_j‖ with X_j \
              the layer's input feature j over the calibration batches (gathered in the linear layers themselves). The LM head and classifiers are \
              left whole. Each pruned layer keeps a mask: after every training step the pruned weights are zeroed again, and snapshots, rewind, \
              fork and checkpoints keep the masks.",
    example: "%prune --sparsity 0.5 --method wanda --eval",
    returns: returns::<Pruned>(),
    run: prune,
};

fn prune(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let method = match args.get("method").unwrap_or("magnitude") {
        "magnitude" => Method::Magnitude,
        "wanda" => Method::Wanda,
        other => return Err(args.usage_error(format!("--method is magnitude or wanda, got `{other}`"))),
    };
    let sparsity: Option<f64> = args.parse_as("sparsity")?;
    let pattern = match args.get("pattern") {
        None => Pattern::Unstructured(sparsity.ok_or_else(|| args.usage_error("give --sparsity S (such as 0.5), or --pattern 2:4"))?),
        Some(p) => {
            let parsed = p.split_once(':').and_then(|(n, m)| Some((n.trim().parse::<i64>().ok()?, m.trim().parse::<i64>().ok()?)));
            let Some((n, m)) = parsed else {
                return Err(args.usage_error(format!("--pattern is N:M, such as 2:4, got `{p}`")));
            };
            if sparsity.is_some_and(|s| (s - n as f64 / m as f64).abs() > 1e-9) {
                return Err(args.usage_error(format!(
                    "--pattern {n}:{m} zeroes {} of the weights; --sparsity {} says otherwise",
                    n as f64 / m as f64,
                    sparsity.unwrap_or_default()
                )));
            }
            Pattern::NofM(n, m)
        }
    };
    let calib: usize = args.parse_as("calib")?.unwrap_or(8);
    if !(1..=1024).contains(&calib) {
        return Err(args.usage_error(format!("--calib must be between 1 and 1024 batches, got {calib}")));
    }
    if args.get("calib").is_some() && method != Method::Wanda {
        return Err(args.usage_error("--calib is for --method wanda"));
    }
    let before = evaluate_if_asked(s, args)?;
    if method == Method::Wanda {
        let trainer = s
            .trainer
            .as_ref()
            .ok_or_else(|| args.usage_error("Wanda scores weights by the data they see: load data first (`%data ...`), or use --method magnitude"))?;
        trainer.model().start_calibration()?;
        let ran = trainer.run_calibration(calib);
        if let Err(e) = ran {
            s.trainer.as_ref().expect("checked").model().finish_calibration_quietly();
            return Err(e.into());
        }
    }
    let what = format!("prune {}", args.get("pattern").map_or_else(|| format!("--sparsity {}", sparsity.unwrap_or_default()), |p| format!("--pattern {p}")));
    let layers = s.change_model(&what, |m| m.prune(method, pattern))?;
    let after = evaluate_if_asked(s, args)?;
    let result = Pruned {
        method: args.get("method").unwrap_or("magnitude").to_string(),
        pattern: args.get("pattern").unwrap_or("unstructured").to_string(),
        sparsity: {
            let (zeros, total) = layers.iter().fold((0.0, 0.0), |(z, t), l| {
                let n = (l.shape[0] * l.shape[1]) as f64;
                (z + l.sparsity * n, t + n)
            });
            zeros / total.max(1.0)
        },
        layers,
        before,
        after,
    };
    ctx.returns(result.bundle(), &result);
    Ok(())
}

/// What `%prune` returns.
#[derive(Serialize, JsonSchema)]
pub struct Pruned {
    /// `magnitude` or `wanda`.
    pub method: String,
    /// `unstructured`, or `N:M`.
    pub pattern: String,
    /// The share of the pruned layers' weights that are zero now.
    pub sparsity: f64,
    /// Each pruned layer's sparsity.
    pub layers: Vec<PrunedLayer>,
    /// With --eval: the validation loss and perplexity before.
    pub before: Option<Metrics>,
    /// And after.
    pub after: Option<Metrics>,
}

impl Pruned {
    fn bundle(&self) -> Bundle {
        let mut kinds: Vec<(String, usize, f64, f64)> = vec![];
        for l in &self.layers {
            let kind = layer_kind(&l.layer);
            let n = (l.shape[0] * l.shape[1]) as f64;
            match kinds.iter_mut().find(|k| k.0 == kind) {
                Some(k) => {
                    k.1 += 1;
                    k.2 += l.sparsity * n;
                    k.3 += n;
                }
                None => kinds.push((kind, 1, l.sparsity * n, n)),
            }
        }
        let mut table = Table::new(["layer", "layers", "zero"]);
        for (kind, count, zeros, total) in &kinds {
            table.row([kind.clone(), count.to_string(), format!("{:.1} %", 100.0 * zeros / total)]);
        }
        let mut head =
            format!("{} layers pruned ({}, {}): {:.1} % of their weights are zero", self.layers.len(), self.method, self.pattern, 100.0 * self.sparsity);
        head.push_str(&loss_change(&self.before, &self.after));
        table.bundle_under(&head)
    }
}
