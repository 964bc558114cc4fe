//! Looking inside the model: the activation cache, the logit lens, ablation, activation
//! patching, per-head attention scores and direct logit attribution, each drawn as a
//! heatmap with its labels and returned as JSON. The analyses are
//! [`crate::inspect`]'s; this file reads arguments and draws.

use schemars::JsonSchema;
use serde::Serialize;
use tch::Tensor;

use super::{flag, option, pos, returns, words, Command};
use crate::inspect::{self, Ablation, Component, HeadScore, Metric, PatchOver};
use crate::models::hooks::Names;
use crate::models::Model;
use crate::plot::{heatmap, ColourScale, Heatmap};
use crate::session::output::{Bundle, CellError, Table};
use crate::session::parse::Args;
use crate::session::{Ctx, Session};
use crate::tokenize::Tokenizer;

/// Activations kept by `%cache`, which Rust cells read with `live::activation`.
pub struct ActivationCache {
    /// The text's tokens, as labels.
    pub tokens: Vec<String>,
    /// Each activation by its hook name.
    pub tensors: Vec<(String, Tensor)>,
}

/// The most parts `%ablate` takes at once.
const MAX_TARGETS: usize = 1024;

/// The most tokens an analysis that runs a batch row per position takes.
const MAX_PATCH_TOKENS: usize = 512;

/// The text's ids `(1, T)` on the model's device and a label per token.
fn encode(s: &Session, args: &Args, text: &str) -> Result<(Tensor, Vec<String>), CellError> {
    let tokenizer = s.tokenizer_or_err()?;
    let ids = tokenizer.encode(text)?;
    if ids.is_empty() {
        return Err(args.usage_error("the text has no tokens"));
    }
    let labels = tokenizer.readable_tokens(&ids);
    Ok((Tensor::from_slice(&ids).unsqueeze(0).to_device(s.model_or_err()?.device()), labels))
}

/// The vocabulary's pieces of the ids [`encode`] gave.
fn pieces(s: &Session, ids: &Tensor) -> Result<Vec<String>, CellError> {
    let ids: Vec<i64> = Vec::try_from(ids.flatten(0, -1)).map_err(crate::Error::from)?;
    let tokenizer = s.tokenizer_or_err()?;
    Ok(ids.into_iter().map(|id| tokenizer.piece(id)).collect())
}

fn usage(message: String) -> CellError {
    crate::Error::Invalid(message).into()
}

/// A word as one token id: ` word` (as it follows another word), else `word`; `#123`
/// names an id.
fn single_token(tokenizer: &Tokenizer, model: &Model, word: &str, what: &str) -> Result<i64, CellError> {
    if let Some(id) = word.strip_prefix('#').and_then(|n| n.parse::<i64>().ok()) {
        let vocab = model.config().vocab_size();
        if !(0..vocab).contains(&id) {
            return Err(usage(format!("{what}: token id {id} is outside the vocabulary 0..{}", vocab - 1)));
        }
        return Ok(id);
    }
    // The word's own tokens, without the BOS a tokenizer such as Gemma's puts first.
    for candidate in [format!(" {word}"), word.to_string()] {
        if let Ok([(id, _, _)]) = tokenizer.encode_offsets(&candidate, false).as_deref() {
            return Ok(*id);
        }
    }
    let pieces = tokenizer.readable_tokens(&tokenizer.encode(word)?);
    Err(usage(format!("{what}: `{word}` is not one token (it is {pieces:?}); give a word that is, or an id as `#123`")))
}

/// `--metric loss` (the default) or `logit-diff:A,B`.
fn metric(s: &Session, args: &Args) -> Result<Metric, CellError> {
    match args.get("metric") {
        None | Some("loss") => Ok(Metric::Loss),
        Some(m) => {
            let Some((a, b)) = m.strip_prefix("logit-diff:").and_then(|pair| pair.split_once(',')) else {
                return Err(args.usage_error(format!("--metric is `loss` or `logit-diff:A,B` (two tokens, such as `logit-diff:Paris,Rome`), got `{m}`")));
            };
            let (tokenizer, model) = (s.tokenizer_or_err()?, s.model_or_err()?);
            Ok(Metric::LogitDiff(single_token(tokenizer, model, a.trim(), "--metric")?, single_token(tokenizer, model, b.trim(), "--metric")?))
        }
    }
}

fn metric_name(metric: Metric, tokenizer: &Tokenizer) -> String {
    match metric {
        Metric::Loss => "loss".into(),
        Metric::LogitDiff(a, b) => {
            format!("logit[{}] − logit[{}]", tokenizer.readable(a), tokenizer.readable(b))
        }
    }
}

/// Draws `map`, writes it to `--save` when given, and shows it.
fn show(args: &Args, ctx: &mut Ctx, map: &Heatmap, caption: String) -> Result<(), CellError> {
    let figure = heatmap(map)?;
    if let Some(path) = args.get("save") {
        crate::session::figures::save_figure(&figure, path)?;
    }
    ctx.display(Bundle::text(caption).figure(&figure));
    Ok(())
}

/// Every `(layer, head, value)` of a layers × heads matrix, largest `key(value)` first.
fn ranked_heads(matrix: &[Vec<f64>], key: impl Fn(f64) -> f64) -> Vec<(usize, usize, f64)> {
    let mut ranked: Vec<(usize, usize, f64)> = matrix.iter().enumerate().flat_map(|(l, r)| r.iter().enumerate().map(move |(h, &v)| (l, h, v))).collect();
    ranked.sort_by(|a, b| key(b.2).total_cmp(&key(a.2)));
    ranked
}

/// `L0`, `L1`, ... and `H0`, `H1`, ...
fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Refuses analyses that run one batch row per position (or head) on long texts, or that
/// would not fit in memory.
fn check_batch(model: &Model, rows: usize, tokens: usize, what: &str) -> Result<(), CellError> {
    if tokens > MAX_PATCH_TOKENS {
        return Err(usage(format!("{what} runs a batch row per position: {tokens} tokens are more than {MAX_PATCH_TOKENS}; use a shorter text")));
    }
    ensure_pass_fits(model, rows, tokens, what, "use a shorter text")
}

/// Refuses an analysis whose passes (of [`inspect::rows_per_pass`] of `rows` rows of
/// `tokens` tokens) would not fit in the device's memory.
fn ensure_pass_fits(model: &Model, rows: usize, tokens: usize, what: &str, advice: &str) -> Result<(), CellError> {
    let rows = inspect::rows_per_pass(tokens as i64, rows as i64) as usize;
    let bytes = model.config().activation_estimate(rows, tokens, false) / 2.0;
    crate::limits::ensure_fits(&format!("{what} ({rows} rows of {tokens} tokens at a time)"), bytes, model.device(), advice)?;
    Ok(())
}

const SAVE: super::Arg = option("save", "PATH", "also write the figure to a .png or .svg file");
const METRIC: super::Arg = option("metric", "M", "`loss` (default) or `logit-diff:A,B`: the logit of token A minus B at the last position");

pub const CACHE: Command = Command {
    name: "cache",
    summary: "run a text and keep its activations by hook name (TransformerLens names), for Rust cells and inspection",
    args: &[
        pos("text", "the text (quote it)"),
        option("names", "PATTERN", "which hook points: comma-separated, `*` matches anything (default every one)"),
        option("budget", "MB", "the most memory the cache may take (default 512)"),
    ],
    details: "Hook points: hook_embed, hook_pos_embed, blocks.L.hook_resid_pre / hook_resid_mid / hook_resid_post, blocks.L.ln1/ln2.hook_normalized, blocks.L.attn.hook_q / hook_k / hook_v / hook_rot_q / hook_rot_k / hook_pattern / hook_z / hook_result, blocks.L.hook_attn_out, blocks.L.mlp.hook_pre / hook_pre_linear / hook_post, blocks.L.hook_mlp_out, ln_final.hook_normalized (each where the family has it). A cache over the budget is refused, with what it would take. In a Rust cell, `live::activation(\"blocks.0.hook_resid_post\")` reads one.",
    example: "%cache \"the cat sat on the mat\" --names \"blocks.*.hook_resid_post,*hook_pattern\"",
    returns: returns::<Cached>(),
    run: cache,
};

fn cache(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let text = args.get("text").expect("required");
    let names = args.get("names").map_or_else(|| Ok(Names::all()), Names::parse)?;
    let budget_mb = args.parse_as::<f64>("budget")?.unwrap_or(512.0);
    if !(budget_mb > 0.0 && budget_mb <= 1e6) {
        return Err(args.usage_error(format!("--budget is in megabytes, between 0 and 1000000; got {budget_mb}")));
    }
    let budget = (budget_mb * 1e6) as u64;
    let model = s.model_or_err()?;
    crate::limits::ensure_fits("a cache budget", budget as f64, model.device(), "give a smaller --budget")?;
    let (ids, tokens) = encode(s, args, text)?;
    let (_, tensors) = inspect::run_with_cache(s.model_or_err()?, &ids, &names, budget)?;
    let mut table = Table::new(["hook point", "shape", "memory"]);
    let mut listed = vec![];
    let mut total = 0u64;
    for (name, t) in &tensors {
        let bytes = (t.numel() * t.kind().elt_size_in_bytes()) as u64;
        total += bytes;
        table.row([name.clone(), format!("{:?}", t.size()), crate::limits::format_bytes(bytes as f64)]);
        listed.push(CachedActivation { name: name.clone(), shape: t.size(), bytes });
    }
    let summary = format!("{} activations of {} tokens kept, {} in all", tensors.len(), tokens.len(), crate::limits::format_bytes(total as f64));
    let cached = Cached { tokens: tokens.clone(), pieces: pieces(s, &ids)?, activations: listed, total_bytes: total };
    s.activations = Some(ActivationCache { tokens, tensors });
    ctx.returns(table.bundle_under(&summary), &cached);
    Ok(())
}

/// What `%cache` returns.
#[derive(Serialize, JsonSchema)]
pub struct Cached {
    /// The text's tokens as people read them.
    pub tokens: Vec<String>,
    /// The same tokens as the vocabulary spells them.
    pub pieces: Vec<String>,
    /// Every activation kept, in the order the forward pass reached them.
    pub activations: Vec<CachedActivation>,
    /// Their memory in all, bytes.
    pub total_bytes: u64,
}

/// One activation `%cache` kept.
#[derive(Serialize, JsonSchema)]
pub struct CachedActivation {
    /// Its hook point, as TransformerLens names it (`blocks.0.hook_resid_pre`).
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its memory, bytes.
    pub bytes: u64,
}

pub const LOGIT_LENS: Command = Command {
    name: "logit-lens",
    summary: "what each layer would predict: the residual stream read through the final norm and unembedding, at every position",
    args: &[pos("text", "the text (quote it)"), option("top", "K", "top tokens kept per layer and position (default 5)"), SAVE],
    details: "Rows are the embeddings and each block's output; columns the positions. Colour: the probability of the token that actually follows; text: the likeliest token.",
    example: "%logit-lens \"The capital of France is\"",
    returns: returns::<LogitLens>(),
    run: logit_lens,
};

fn logit_lens(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let text = args.get("text").expect("required");
    let k = args.parse_as::<i64>("top")?.unwrap_or(5);
    if !(1..=100).contains(&k) {
        return Err(args.usage_error(format!("--top must be in 1..=100, got {k}")));
    }
    let (ids, tokens) = encode(s, args, text)?;
    let lens = inspect::logit_lens(s.model_or_err()?, &ids, k)?;
    let tokenizer = s.tokenizer_or_err()?;
    let word = |id: i64| tokenizer.readable(id);
    let values: Vec<Vec<f64>> = lens.next.iter().map(|r| r.iter().map(|p| p.unwrap_or(f64::NAN)).collect()).collect();
    let best: Vec<Vec<String>> = lens.top.iter().map(|r| r.iter().map(|top| word(top[0].0)).collect()).collect();
    let rows: Vec<String> = lens.rows.iter().map(|r| if r == "embed" { r.clone() } else { format!("L{r}") }).collect();
    let map = Heatmap {
        title: "logit lens: the likeliest next token at each layer",
        values: &values,
        rows: &rows,
        columns: &tokens,
        row_axis: "layer",
        column_axis: "position",
        scale: ColourScale::Sequential { lo: 0.0, hi: 1.0 },
        legend: "p(actual next)",
        cell_text: Some(&best),
    };
    show(args, ctx, &map, format!("<figure: logit lens, {} layers × {} positions>", rows.len(), tokens.len()))?;
    let mut table = Table::new(["layer", "last position: top tokens"]);
    for (row, top) in rows.iter().zip(&lens.top) {
        let last = top.last().expect("a position");
        table.row([row.clone(), last.iter().map(|(id, p)| format!("{} {p:.3}", word(*id))).collect::<Vec<_>>().join(", ")]);
    }
    let top = lens
        .top
        .iter()
        .map(|r| {
            r.iter().map(|t| t.iter().map(|(id, p)| TokenProbability { token: word(*id), piece: tokenizer.piece(*id), id: *id, p: *p }).collect()).collect()
        })
        .collect();
    let pieces = pieces(s, &ids)?;
    ctx.returns(table.bundle(), &LogitLens { tokens, pieces, rows: lens.rows, top, next_probability: lens.next });
    Ok(())
}

/// What `%logit-lens` returns.
#[derive(Serialize, JsonSchema)]
pub struct LogitLens {
    /// The text's tokens as people read them (the positions).
    pub tokens: Vec<String>,
    /// The same tokens as the vocabulary spells them.
    pub pieces: Vec<String>,
    /// The rows: `embed`, then each block's number.
    pub rows: Vec<String>,
    /// For each row and position, the likeliest next tokens.
    pub top: Vec<Vec<Vec<TokenProbability>>>,
    /// For each row and position, the probability of the token that actually follows (null at the last position).
    pub next_probability: Vec<Vec<Option<f64>>>,
}

/// A token and its probability.
#[derive(Serialize, JsonSchema)]
pub struct TokenProbability {
    /// Its text as people read it.
    pub token: String,
    /// As the vocabulary spells it.
    pub piece: String,
    /// Its id.
    pub id: i64,
    /// Its probability.
    pub p: f64,
}

pub const ABLATE: Command = Command {
    name: "ablate",
    summary: "zero- or mean-ablate heads (L.H), MLPs (L.mlp), attention (L.attn) or whole layers (L) and show the change in loss or a logit difference",
    args: &[
        words("targets", "what to ablate, then the text (quote it); `heads` ablates each head in turn"),
        flag("mean", "replace with the mean over the text's (or data's) positions instead of zero"),
        flag("data", "measure on the validation batches of the loaded data instead of a text"),
        METRIC,
        SAVE,
    ],
    details: "`%ablate 3.1 5.mlp TEXT` ablates all the targets at once. `%ablate heads TEXT` ablates every head alone and draws each one's effect as a layers × heads heatmap (red: the metric rises).",
    example: "%ablate 4.2 \"the cat sat on the mat. the cat sat on the mat.\"",
    returns: returns::<Ablated>(),
    run: ablate,
};

fn ablate(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let mut words: Vec<&str> = args.rest().iter().map(String::as_str).collect();
    let on_data = args.flag("data");
    let text = if on_data { None } else { words.pop() };
    if words.is_empty() {
        return Err(args.usage_error(if on_data {
            "give what to ablate"
        } else {
            "give what to ablate and then the text, such as `%ablate 3.1 \"the text\"`"
        }));
    }
    let metric = metric(s, args)?;
    let ablation = if args.flag("mean") { Ablation::Mean } else { Ablation::Zero };
    let model = s.model_or_err()?;
    let d = model.config().dims();
    let name = metric_name(metric, s.tokenizer_or_err()?);
    if words == ["heads"] {
        let Some(text) = text else { return Err(args.usage_error("`%ablate heads` takes a text, not --data")) };
        let (ids, tokens) = encode(s, args, text)?;
        check_batch(model, d.heads as usize, tokens.len(), "ablating each head")?;
        let (before, effects) = inspect::ablate_each_head(model, &ids, ablation, metric)?;
        let map = Heatmap {
            title: &format!("change in {name} with each head {}-ablated", if ablation == Ablation::Mean { "mean" } else { "zero" }),
            values: &effects,
            rows: &numbered("L", effects.len()),
            columns: &numbered("H", d.heads as usize),
            row_axis: "layer",
            column_axis: "head",
            scale: ColourScale::diverging_for(&effects),
            legend: &format!("Δ {name}"),
            cell_text: None,
        };
        show(args, ctx, &map, format!("<figure: ablation effect of {} heads>", d.layers * d.heads))?;
        let ranked = ranked_heads(&effects, f64::abs);
        let mut table = Table::new(["head", &format!("Δ {name}")]);
        for (l, h, v) in ranked.iter().take(5) {
            table.row([format!("{l}.{h}"), format!("{v:+.4}")]);
        }
        ctx.returns(table.bundle(), &Ablated { metric: name, before, targets: None, after: None, change: None, effects: Some(effects) });
        return Ok(());
    }
    if words.len() > MAX_TARGETS {
        return Err(args.usage_error(format!("{} targets are more than {MAX_TARGETS}; `%ablate heads TEXT` tries every head", words.len())));
    }
    let components = words.iter().map(|w| Component::parse(w, d.layers, d.heads)).collect::<crate::Result<Vec<_>>>()?;
    let batches = match text {
        Some(text) => vec![inspect::text_batch(&encode(s, args, text)?.0)?],
        None => {
            let trainer = s.trainer.as_ref().ok_or_else(|| args.usage_error("--data needs data: `%data ...` first"))?;
            let batches = trainer.validation_batches();
            if batches.is_empty() {
                return Err(args.usage_error("no validation data: load data with a validation fraction (`--val 0.1`)"));
            }
            batches
        }
    };
    let (before, after) = inspect::ablate(model, &batches, &components, ablation, metric)?;
    let targets: Vec<String> = components.iter().map(ToString::to_string).collect();
    let mut table = Table::new(["", &name]);
    table.row(["before".to_string(), format!("{before:.4}")]);
    table.row([format!("{} ablated", targets.join(", ")), format!("{after:.4}")]);
    table.row(["change".to_string(), format!("{:+.4}", after - before)]);
    let ablated = Ablated { metric: name, before, targets: Some(targets), after: Some(after), change: Some(after - before), effects: None };
    ctx.returns(table.bundle(), &ablated);
    Ok(())
}

/// What `%ablate` returns: for targets, the metric before and after; for `heads`, each
/// head's effect.
#[derive(Serialize, JsonSchema)]
pub struct Ablated {
    /// `loss` or `logit-diff:A,B`.
    pub metric: String,
    /// The metric without ablation.
    pub before: f64,
    /// The parts ablated together (`17.3`, `4.mlp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
    /// The metric with them ablated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<f64>,
    /// after − before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<f64>,
    /// `heads`: the change when each head alone is ablated, per layer and head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effects: Option<Vec<Vec<f64>>>,
}

pub const PATCH: Command = Command {
    name: "patch",
    summary: "activation patching: copy activations of the clean text into the corrupt one and show how much of the clean behaviour each restores",
    args: &[
        pos("clean", "the clean text (quote it)"),
        pos("corrupt", "the corrupt text, with as many tokens"),
        METRIC,
        option("over", "WHERE", "resid (default: each block's input, per position), attn, mlp (per position) or heads"),
        SAVE,
    ],
    details: "Each cell is (patched − corrupt) / (clean − corrupt) of the metric: 1 restores the clean behaviour, 0 does nothing. Positions where the texts differ are labelled clean/corrupt.",
    example: "%patch \"The Eiffel Tower is in the city of\" \"The Colosseum is in the city of\" --metric logit-diff:Paris,Rome",
    returns: returns::<Patched>(),
    run: patch,
};

fn patch(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let over = match args.get("over").unwrap_or("resid") {
        "resid" => PatchOver::Resid,
        "attn" => PatchOver::Attn,
        "mlp" => PatchOver::Mlp,
        "heads" => PatchOver::Heads,
        other => return Err(args.usage_error(format!("--over is resid, attn, mlp or heads, got `{other}`"))),
    };
    let metric = match args.get("metric") {
        Some(_) => metric(s, args)?,
        None => return Err(args.usage_error("patching needs --metric logit-diff:A,B (the clean answer A against the corrupt one B)")),
    };
    let (clean, clean_tokens) = encode(s, args, args.get("clean").expect("required"))?;
    let (corrupt, corrupt_tokens) = encode(s, args, args.get("corrupt").expect("required"))?;
    let model = s.model_or_err()?;
    let d = model.config().dims();
    let width = if over == PatchOver::Heads { d.heads as usize } else { corrupt_tokens.len() };
    check_batch(model, width, corrupt_tokens.len(), "patching")?;
    let result = inspect::patch(model, &clean, &corrupt, metric, over)?;
    let tokens: Vec<String> = clean_tokens.iter().zip(&corrupt_tokens).map(|(a, b)| if a == b { a.clone() } else { format!("{a}/{b}") }).collect();
    let columns = if over == PatchOver::Heads { numbered("H", width) } else { tokens.clone() };
    let name = metric_name(metric, s.tokenizer_or_err()?);
    let where_ = args.get("over").unwrap_or("resid");
    let limit = result.restored.iter().flatten().fold(1.0f64, |m, v| m.max(v.abs()));
    let map = Heatmap {
        title: &format!("patching {where_}: share of {name} restored"),
        values: &result.restored,
        rows: &numbered("L", result.restored.len()),
        columns: &columns,
        row_axis: "layer",
        column_axis: if over == PatchOver::Heads { "head" } else { "position" },
        scale: ColourScale::Diverging { limit },
        legend: "restored",
        cell_text: None,
    };
    show(args, ctx, &map, format!("<figure: activation patching over {where_}>"))?;
    let summary = format!("{name}: clean {:.3}, corrupt {:.3}", result.clean, result.corrupt);
    let patched = Patched { tokens, over: where_.to_string(), metric: name, clean: result.clean, corrupt: result.corrupt, restored: result.restored };
    ctx.returns(Bundle::text(summary), &patched);
    Ok(())
}

/// What `%patch` returns.
#[derive(Serialize, JsonSchema)]
pub struct Patched {
    /// The corrupt text's tokens.
    pub tokens: Vec<String>,
    /// What was patched: `resid`, `attn`, `mlp` or `heads`.
    pub over: String,
    /// The metric.
    pub metric: String,
    /// Its value on the clean run.
    pub clean: f64,
    /// Its value on the corrupt run.
    pub corrupt: f64,
    /// The share of clean − corrupt each patch restores, per layer and position (or head).
    pub restored: Vec<Vec<f64>>,
}

pub const HEADS: Command = Command {
    name: "heads",
    summary: "score every attention head: induction, previous-token or first-token attention, on repeated random tokens",
    args: &[
        pos("score", "which score").choices(&["induction", "previous-token", "first-token"]),
        option("length", "N", "random tokens before they repeat (default 24)"),
        option("batch", "B", "sequences averaged over (default 4)"),
        option("seed", "S", "seed for the random tokens (default 0)"),
        SAVE,
    ],
    details: "The sequences are a start token, N random tokens, and the same N again. Induction: attention from each token of the repeat to the token after its first occurrence. Also shows the loss on the first copy and on the repeat, which induction heads make low.",
    example: "%heads induction",
    returns: returns::<HeadScores>(),
    run: heads,
};

fn heads(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let (kind, title) = match args.get("score").expect("required") {
        "induction" => (HeadScore::Induction, "induction score"),
        "previous-token" => (HeadScore::PreviousToken, "previous-token attention"),
        _ => (HeadScore::FirstToken, "first-token attention"),
    };
    let length = args.parse_as::<i64>("length")?.unwrap_or(24);
    let batch = args.parse_as::<i64>("batch")?.unwrap_or(4);
    let seed = args.parse_as::<u64>("seed")?.unwrap_or(0);
    let model = s.model_or_err()?;
    let config = model.config();
    // Each sequence starts as the model's texts start: after GPT-2's end-of-text, or the
    // BOS a tokenizer such as Gemma's puts first (what an empty text encodes to).
    let tokenizer = s.tokenizer_or_err()?;
    let bos = match tokenizer.encode("").as_deref() {
        Ok([bos]) => Some(*bos),
        _ => None,
    };
    let prefix = tokenizer.token_id(crate::tokenize::END_OF_TEXT).or(bos).filter(|&id| id < config.vocab_size());
    let total = 2 * length + i64::from(prefix.is_some());
    if !(2..=4096).contains(&length) || total > config.max_positions() {
        return Err(args.usage_error(format!("--length must be at least 2 and fit twice in the model's {} positions, got {length}", config.max_positions())));
    }
    if !(1..=256).contains(&batch) {
        return Err(args.usage_error(format!("--batch must be in 1..=256, got {batch}")));
    }
    ensure_pass_fits(model, batch as usize, total as usize, "scoring heads", "use a smaller --length")?;
    // Real vocabularies keep control and byte tokens among the first ids.
    let vocab = config.vocab_size();
    let lo = if vocab > 1000 { 100 } else { 0 };
    let ids = inspect::repeated_tokens(prefix, length, batch, lo, vocab, seed)?;
    let result = inspect::head_scores(model, &ids, i64::from(prefix.is_some()), kind)?;
    let d = config.dims();
    let map = Heatmap {
        title: &format!("{title} per head"),
        values: &result.scores,
        rows: &numbered("L", result.scores.len()),
        columns: &numbered("H", d.heads as usize),
        row_axis: "layer",
        column_axis: "head",
        scale: ColourScale::Sequential { lo: 0.0, hi: 1.0 },
        legend: "score",
        cell_text: None,
    };
    show(args, ctx, &map, format!("<figure: {title}, {} layers × {} heads>", d.layers, d.heads))?;
    let ranked = ranked_heads(&result.scores, |v| v);
    let mut table = Table::new(["head", title]);
    for (l, h, v) in ranked.iter().take(5) {
        table.row([format!("{l}.{h}"), format!("{v:.3}")]);
    }
    let top = ranked.iter().take(10).map(|(l, h, v)| RankedHead { head: format!("{l}.{h}"), score: *v }).collect();
    let losses = if result.first_loss.is_finite() {
        format!("\nloss on the first copy {:.3}, on the repeat {:.3}", result.first_loss, result.repeat_loss)
    } else {
        String::new()
    };
    let tokens: Vec<Vec<i64>> = Vec::try_from(&ids).map_err(crate::Error::from)?;
    let scores = HeadScores {
        score: args.get("score").expect("required").to_string(),
        scores: result.scores,
        top,
        tokens,
        first_loss: result.first_loss.is_finite().then_some(result.first_loss),
        repeat_loss: result.repeat_loss.is_finite().then_some(result.repeat_loss),
    };
    ctx.returns(Bundle::text(format!("{}{losses}", table.to_text())).html(table.to_html()), &scores);
    Ok(())
}

/// What `%heads` returns.
#[derive(Serialize, JsonSchema)]
pub struct HeadScores {
    /// `induction`, `previous-token` or `first-token`.
    pub score: String,
    /// Every head's score, per layer and head.
    pub scores: Vec<Vec<f64>>,
    /// The ten best heads.
    pub top: Vec<RankedHead>,
    /// The repeated random token ids scored on, one row per sequence.
    pub tokens: Vec<Vec<i64>>,
    /// The loss on the first copy of the tokens (induction).
    pub first_loss: Option<f64>,
    /// The loss on the repeat.
    pub repeat_loss: Option<f64>,
}

/// A head and its score.
#[derive(Serialize, JsonSchema)]
pub struct RankedHead {
    /// `LAYER.HEAD`.
    pub head: String,
    /// Its score.
    pub score: f64,
}

pub const ATTRIBUTE: Command = Command {
    name: "attribute",
    summary: "direct logit attribution: how much each layer's attention and MLP, and each head, adds to one token's logit at the last position",
    args: &[pos("text", "the text (quote it)"), option("target", "TOKEN", "the token whose logit is explained (a word, or an id as #123)"), SAVE],
    details: "Each component's output is read through the final norm frozen at the last layer's scale, so the parts (with the embeddings and the norm's shift) add up to the logit.",
    example: "%attribute \"The capital of France is\" --target Paris",
    returns: returns::<Attributed>(),
    run: attribute,
};

fn attribute(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let Some(target) = args.get("target") else { return Err(args.usage_error("give the token to explain with --target TOKEN")) };
    let (ids, _) = encode(s, args, args.get("text").expect("required"))?;
    let (tokenizer, model) = (s.tokenizer_or_err()?, s.model_or_err()?);
    let id = single_token(tokenizer, model, target, "--target")?;
    let a = inspect::attribute(model, &ids, id)?;
    let word = tokenizer.readable(id);
    let map = Heatmap {
        title: &format!("each head's direct effect on logit[{word:?}]"),
        values: &a.heads,
        rows: &numbered("L", a.heads.len()),
        columns: &numbered("H", a.heads.first().map_or(0, Vec::len)),
        row_axis: "layer",
        column_axis: "head",
        scale: ColourScale::diverging_for(&a.heads),
        legend: "logit",
        cell_text: None,
    };
    show(args, ctx, &map, format!("<figure: direct logit attribution to {word:?} per head>"))?;
    let mut table = Table::new(["layer", "attention", "MLP"]);
    for (l, (at, m)) in a.attn.iter().zip(&a.mlp).enumerate() {
        table.row([l.to_string(), format!("{at:+.3}"), format!("{m:+.3}")]);
    }
    let summary = format!("logit[{word:?}] = {:.3}: embeddings {:+.3}, norm shift {:+.3}, layers below", a.logit, a.embed, a.norm_bias);
    ctx.returns(table.bundle_under(&summary), &Attributed { target: word, parts: a });
    Ok(())
}

/// What `%attribute` returns: the parts that add up to the target's logit.
#[derive(Serialize, JsonSchema)]
pub struct Attributed {
    /// The target token's text.
    pub target: String,
    /// The parts.
    #[serde(flatten)]
    pub parts: inspect::Attribution,
}
