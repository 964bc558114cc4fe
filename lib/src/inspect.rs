//! Looking inside a model, built on the hook points of [`crate::models::hooks`]: running
//! with a cache, the logit lens, zero and mean ablation, activation patching, per-head
//! attention scores (induction, previous token, first token) and direct logit
//! attribution. Each works on token ids for every family with the hook points it needs;
//! the commands (`%cache`, `%logit-lens`, ...) turn text into ids and results into
//! pictures.
//!
//! Batched analyses run passes of about [`TOKENS_PER_PASS`] tokens, and every hook point
//! checks for an interrupt, so a long analysis stops within a second and changes nothing.

use tch::{Kind, Tensor};

use crate::data::Batch;
use crate::error::{invalid, Result};
use crate::models::hooks::{Action, Along, Collected, Edit, Hooks, Names, Point, Site};
use crate::models::{ForwardOptions, Model, Output, Readout, Task};

/// The most memory an analysis's own caches may take.
const ANALYSIS_BUDGET: u64 = 4 << 30;
/// About how many tokens one forward pass of a batched analysis holds: long enough to
/// batch well, short enough that an interrupt is answered quickly.
const TOKENS_PER_PASS: i64 = 512;

/// How many of `count` rows of `t` tokens a batched analysis runs in one pass (what
/// memory estimates should count).
pub fn rows_per_pass(t: i64, count: i64) -> i64 {
    (TOKENS_PER_PASS / t.max(1)).clamp(1, count.max(1))
}

/// The metric on `count` copies of `text`, copy `i` edited along `along` at `i` (a
/// position or head) by `action`, at hook point `name`; in passes of about
/// [`TOKENS_PER_PASS`] tokens.
fn walk_rows(model: &Model, text: &Batch, count: i64, name: &str, along: Along, action: impl Fn() -> Action, metric: Metric) -> Result<Vec<f64>> {
    let t = text.inputs.size()[1];
    let chunk = rows_per_pass(t, count);
    let mut values = Vec::with_capacity(count as usize);
    for start in (0..count).step_by(chunk as usize) {
        crate::interrupt::check("running the model")?;
        let rows = chunk.min(count - start);
        let inputs = text.inputs.f_expand([rows, t], false)?;
        let hooks = Hooks::new().edit(Edit::new(Names::one(name), action()).walk(along, start));
        let (out, _) = run_with_hooks(model, &inputs, hooks)?;
        values.extend(metric.per_row(&logits(out)?, &text.targets.f_expand([rows, t], false)?)?);
    }
    Ok(values)
}

/// A forward pass in eval mode without gradients, through `hooks`.
pub fn run_with_hooks(model: &Model, ids: &Tensor, hooks: Hooks) -> Result<(Output, Collected)> {
    let (out, hooks) = tch::no_grad(|| -> Result<(Output, Hooks)> {
        let out = model.forward(&ids.f_to_device(model.device())?, None, &ForwardOptions { hooks: Some(&hooks), ..Default::default() }, None)?;
        Ok((out, hooks))
    })?;
    Ok((out, hooks.finish()?))
}

/// Runs `ids` and keeps the activations whose names match `names`, refusing (with the
/// number) when they would take more than `budget_bytes`.
pub fn run_with_cache(model: &Model, ids: &Tensor, names: &Names, budget_bytes: u64) -> Result<(Output, Vec<(String, Tensor)>)> {
    let (out, collected) = run_with_hooks(model, ids, Hooks::new().cache(names.clone(), budget_bytes))?;
    Ok((out, collected.cache))
}

/// Every hook point of `model` with its shape for one sequence of `tokens` tokens.
pub fn hook_points(model: &Model, tokens: i64) -> Result<Vec<(String, Vec<i64>)>> {
    let ids = Tensor::f_zeros([1, tokens.max(1)], (Kind::Int64, model.device()))?;
    // Caching everything makes the activations computed only on request too.
    Ok(run_with_hooks(model, &ids, Hooks::new().cache(Names::all(), u64::MAX))?.1.points)
}

/// The language model's readout, or an error naming what `analysis` needs.
fn readout(model: &Model, analysis: &str) -> Result<Readout> {
    match (model.task(), model.network.readout()) {
        (Task::LanguageModel, Some(r)) => Ok(r),
        _ => invalid!("{analysis} reads the residual stream through the unembedding of a language model; this {} model has none", model.config().model_type()),
    }
}

/// The logits of a pass of a language model (callers check for a readout first).
fn logits(out: Output) -> Result<Tensor> {
    out.logits.ok_or_else(|| crate::Error::Invalid("this model has no logits to measure".into()))
}

fn cached<'a>(cache: &'a [(String, Tensor)], name: &str) -> Result<&'a Tensor> {
    cache.iter().find(|(n, _)| n == name).map(|(_, t)| t).ok_or_else(|| crate::Error::Invalid(format!("the model has no hook point `{name}`")))
}

/// What a metric is computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Mean next-token cross-entropy over the text (lower is better).
    Loss,
    /// `logit[a] − logit[b]` at the last position (token ids).
    LogitDiff(i64, i64),
}

impl Metric {
    /// The metric for each batch row of `logits: (B, T, vocab)`; `targets: (B, T)` holds
    /// each position's next token (-100 where there is none to score, see [`text_batch`]).
    pub fn per_row(self, logits: &Tensor, targets: &Tensor) -> Result<Vec<f64>> {
        let logits = logits.f_to_kind(Kind::Float)?;
        let values = match self {
            Metric::Loss => {
                let (losses, scored) = token_losses(&logits, targets)?;
                if !bool::try_from(scored.f_any()?)? {
                    return invalid!("the loss needs at least two tokens: one to read and one to predict");
                }
                let counts = scored.f_sum_dim_intlist([1].as_slice(), false, Kind::Float)?.f_clamp_min(1.0)?;
                losses.f_sum_dim_intlist([1].as_slice(), false, Kind::Float)?.f_div(&counts)?
            }
            Metric::LogitDiff(a, b) => {
                let last = logits.f_select(1, -1)?;
                last.f_select(1, a)?.f_sub(&last.f_select(1, b)?)?
            }
        };
        Ok(Vec::<f64>::try_from(values.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?)?)
    }
}

/// Each position's loss on its target, `(B, T)` (0 where the target is -100), and which
/// positions have a target.
fn token_losses(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let targets = targets.f_to_device(logits.device())?;
    let scored = targets.f_ne(-100)?;
    let logp = logits.f_to_kind(Kind::Float)?.f_log_softmax(-1, Kind::Float)?;
    let picked = logp.f_gather(-1, &targets.f_clamp_min(0)?.f_unsqueeze(-1)?, false)?.f_squeeze_dim(-1)?;
    Ok((picked.f_neg()?.f_mul(&scored.f_to_kind(Kind::Float)?)?, scored))
}

/// A text's ids `(B, T)` as a batch whose targets are the next tokens (none after the last).
pub fn text_batch(ids: &Tensor) -> Result<Batch> {
    let t = ids.size()[1];
    let next = ids.f_narrow(1, 1, t - 1)?;
    let none = Tensor::f_full([ids.size()[0], 1], -100, (Kind::Int64, ids.device()))?;
    Ok(Batch::plain(ids.shallow_clone(), Tensor::f_cat(&[next, none], 1)?))
}

/// The logit lens: what each layer's residual stream would predict if it were the last.
#[derive(Debug, Clone)]
pub struct Lens {
    /// Row labels: `embed`, then each block's output (`0`, `1`, ...).
    pub rows: Vec<String>,
    /// `[row][position]`: the `k` likeliest tokens and their probabilities.
    pub top: Vec<Vec<Vec<(i64, f64)>>>,
    /// `[row][position]`: the probability of the token that actually follows (none at
    /// the last position).
    pub next: Vec<Vec<Option<f64>>>,
}

/// The logit lens over `ids: (1, T)`, the `k` likeliest tokens at each layer and position.
pub fn logit_lens(model: &Model, ids: &Tensor, k: i64) -> Result<Lens> {
    let readout = readout(model, "the logit lens")?;
    let layers = model.config().dims().layers as usize;
    let names = std::iter::once(Point::name_of(0, Site::ResidPre)).chain((0..layers).map(|l| Point::name_of(l, Site::ResidPost))).collect::<Vec<_>>();
    let (_, cache) = run_with_cache(model, ids, &Names::parse(&names.join(","))?, ANALYSIS_BUDGET)?;
    let t = ids.size()[1];
    let ids_cpu: Vec<i64> = Vec::try_from(ids.f_reshape([-1])?.f_to_device(tch::Device::Cpu)?)?;
    let mut lens = Lens { rows: vec![], top: vec![], next: vec![] };
    for (row, name) in names.iter().enumerate() {
        let probs = tch::no_grad(|| readout.logits(&cached(&cache, name)?.f_get(0)?))?.f_softmax(-1, Kind::Float)?; // (T, vocab)
        let (values, indices) = probs.f_topk(k.min(probs.size()[1]), -1, true, true)?;
        let values: Vec<Vec<f64>> = Vec::try_from(values.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?)?;
        let indices: Vec<Vec<i64>> = Vec::try_from(indices.f_to_device(tch::Device::Cpu)?)?;
        lens.top.push(indices.into_iter().zip(values).map(|(i, v)| i.into_iter().zip(v).collect()).collect());
        let next = (0..t as usize)
            .map(|p| ids_cpu.get(p + 1).map(|&id| probs.f_get(p as i64).and_then(|r| r.f_get(id)).map(|v| v.double_value(&[]))).transpose())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        lens.next.push(next);
        lens.rows.push(if row == 0 { "embed".into() } else { (row - 1).to_string() });
    }
    Ok(lens)
}

/// A part of the model to ablate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// One attention head (`L.H`): its `hook_z`.
    Head(usize, i64),
    /// A block's attention output (`L.attn`).
    Attn(usize),
    /// A block's MLP output (`L.mlp`).
    Mlp(usize),
    /// A whole block (`L`): attention and MLP outputs.
    Layer(usize),
}

impl Component {
    /// Reads `3.1`, `3.attn`, `3.mlp` or `3`, checked against the model's `layers` and `heads`.
    pub fn parse(text: &str, layers: i64, heads: i64) -> Result<Self> {
        let usage = || format!("`{text}` is not a part of the model; write a head as LAYER.HEAD (`3.1`), `3.attn`, `3.mlp` or a whole layer `3`");
        let (layer, rest) = text.split_once('.').map_or((text, None), |(l, r)| (l, Some(r)));
        let layer: i64 = layer.parse().map_err(|_| crate::Error::Invalid(usage()))?;
        if !(0..layers).contains(&layer) {
            return invalid!("layer {layer} in `{text}` is outside the model's layers 0..{}", layers - 1);
        }
        let layer = layer as usize;
        Ok(match rest {
            None => Component::Layer(layer),
            Some("attn") => Component::Attn(layer),
            Some("mlp") => Component::Mlp(layer),
            Some(h) => {
                let head: i64 = h.parse().map_err(|_| crate::Error::Invalid(usage()))?;
                if !(0..heads).contains(&head) {
                    return invalid!("head {head} in `{text}` is outside the model's heads 0..{}", heads - 1);
                }
                Component::Head(layer, head)
            }
        })
    }

    /// The hook point the ablation writes, and the head when it is one.
    fn points(self) -> Vec<(String, Option<i64>)> {
        match self {
            Component::Head(l, h) => vec![(Point::name_of(l, Site::Z), Some(h))],
            Component::Attn(l) => vec![(Point::name_of(l, Site::AttnOut), None)],
            Component::Mlp(l) => vec![(Point::name_of(l, Site::MlpOut), None)],
            Component::Layer(l) => vec![(Point::name_of(l, Site::AttnOut), None), (Point::name_of(l, Site::MlpOut), None)],
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Component::Head(l, h) => write!(f, "{l}.{h}"),
            Component::Attn(l) => write!(f, "{l}.attn"),
            Component::Mlp(l) => write!(f, "{l}.mlp"),
            Component::Layer(l) => write!(f, "{l}"),
        }
    }
}

/// Zero or mean ablation: what replaces an ablated activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ablation {
    /// Zeros.
    Zero,
    /// Its mean over every batch and position of the inputs.
    Mean,
}

/// The mean of each named activation over every batch row and position of `batches`,
/// shaped to broadcast over an activation (`(1, 1, ...)`).
fn means(model: &Model, batches: &[Batch], names: &[String]) -> Result<Vec<(String, Tensor)>> {
    let filter = Names::parse(&names.join(","))?;
    let mut sums: Vec<(String, Tensor, i64)> = vec![];
    for batch in batches {
        crate::interrupt::check("computing mean activations")?;
        let (_, cache) = run_with_cache(model, &batch.inputs, &filter, ANALYSIS_BUDGET)?;
        for (name, t) in cache {
            let count = t.size()[0] * t.size()[1];
            let sum = t.f_to_kind(Kind::Double)?.f_sum_dim_intlist([0, 1].as_slice(), true, Kind::Double)?;
            match sums.iter_mut().find(|(n, _, _)| *n == name) {
                Some(entry) => {
                    entry.1 = entry.1.f_add(&sum)?;
                    entry.2 += count;
                }
                None => sums.push((name, sum, count)),
            }
        }
    }
    sums.into_iter().map(|(n, s, c)| Ok((n, s.f_div_scalar(c as f64)?.f_to_kind(Kind::Float)?))).collect()
}

fn ablation_edits(model: &Model, batches: &[Batch], components: &[Component], ablation: Ablation) -> Result<Vec<Edit>> {
    let points: Vec<(String, Option<i64>)> = components.iter().flat_map(|c| c.points()).collect();
    let means = match ablation {
        Ablation::Zero => vec![],
        Ablation::Mean => means(model, batches, &points.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>())?,
    };
    points
        .into_iter()
        .map(|(name, head)| {
            let action = match ablation {
                Ablation::Zero => Action::Zero,
                Ablation::Mean => Action::Replace(cached(&means, &name)?.shallow_clone()),
            };
            let edit = Edit::new(Names::one(name), action);
            Ok(match head {
                Some(h) => edit.head(h),
                None => edit,
            })
        })
        .collect()
}

/// The metric averaged over the rows of `batches`, with `edits` applied.
fn mean_metric(model: &Model, batches: &[Batch], metric: Metric, edits: impl Fn() -> Result<Vec<Edit>>) -> Result<f64> {
    let (mut total, mut rows) = (0.0, 0usize);
    for batch in batches {
        crate::interrupt::check("ablating")?;
        let hooks = edits()?.into_iter().fold(Hooks::new(), Hooks::edit);
        let (out, _) = run_with_hooks(model, &batch.inputs, hooks)?;
        let values = metric.per_row(&logits(out)?, &batch.targets)?;
        rows += values.len();
        total += values.iter().sum::<f64>();
    }
    Ok(total / rows.max(1) as f64)
}

/// The metric on `batches` before and after ablating every one of `components` at once.
pub fn ablate(model: &Model, batches: &[Batch], components: &[Component], ablation: Ablation, metric: Metric) -> Result<(f64, f64)> {
    readout(model, "ablation's metric")?;
    let base = mean_metric(model, batches, metric, || Ok(vec![]))?;
    let edits = ablation_edits(model, batches, components, ablation)?;
    let ablated = mean_metric(model, batches, metric, || edits.iter().map(clone_edit).collect())?;
    Ok((base, ablated))
}

fn clone_edit(e: &Edit) -> Result<Edit> {
    let action = match &e.action {
        Action::Zero => Action::Zero,
        Action::Scale(s) => Action::Scale(*s),
        Action::Replace(t) => Action::Replace(t.shallow_clone()),
    };
    Ok(Edit { names: e.names.clone(), row: e.row, head: e.head, position: e.position, walk: e.walk, action })
}

/// The change in the metric on `ids: (1, T)` when each head alone is ablated:
/// `[layer][head]`. For each layer, a batch row per head.
pub fn ablate_each_head(model: &Model, ids: &Tensor, ablation: Ablation, metric: Metric) -> Result<(f64, Vec<Vec<f64>>)> {
    readout(model, "ablation's metric")?;
    let d = model.config().dims();
    let text = [text_batch(ids)?];
    let base = mean_metric(model, &text, metric, || Ok(vec![]))?;
    let mut effects = vec![];
    for layer in 0..d.layers as usize {
        let name = Point::name_of(layer, Site::Z);
        let mean = match ablation {
            Ablation::Zero => None,
            Ablation::Mean => Some(cached(&means(model, &text, std::slice::from_ref(&name))?, &name)?.shallow_clone()),
        };
        let action = || mean.as_ref().map_or(Action::Zero, |m| Action::Replace(m.shallow_clone()));
        effects.push(walk_rows(model, &text[0], d.heads, &name, Along::Head, action, metric)?.into_iter().map(|v| v - base).collect());
    }
    Ok((base, effects))
}

/// Where activation patching copies the clean run's activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchOver {
    /// The residual stream entering each block, per position.
    Resid,
    /// Each block's attention output, per position.
    Attn,
    /// Each block's MLP output, per position.
    Mlp,
    /// Each head's `z`, at every position.
    Heads,
}

impl PatchOver {
    fn site(self) -> Site {
        match self {
            PatchOver::Resid => Site::ResidPre,
            PatchOver::Attn => Site::AttnOut,
            PatchOver::Mlp => Site::MlpOut,
            PatchOver::Heads => Site::Z,
        }
    }
}

/// What activation patching found.
#[derive(Debug, Clone)]
pub struct Patching {
    /// The metric on the clean text.
    pub clean: f64,
    /// The metric on the corrupt text.
    pub corrupt: f64,
    /// `[layer][position or head]`: `(patched − corrupt) / (clean − corrupt)`, the share
    /// of the clean behaviour one patch restores.
    pub restored: Vec<Vec<f64>>,
}

/// Activation patching from `clean` into `corrupt` (both `(1, T)`, the same length):
/// for each layer, a batch row per position (or head), row `i` patched at position (or
/// head) `i`.
pub fn patch(model: &Model, clean: &Tensor, corrupt: &Tensor, metric: Metric, over: PatchOver) -> Result<Patching> {
    readout(model, "patching's metric")?;
    let (tc, tk) = (clean.size()[1], corrupt.size()[1]);
    if tc != tk {
        return invalid!(
            "the clean text has {tc} tokens and the corrupt one {tk}: patching copies position by position, so they need the same number; reword one of them"
        );
    }
    let d = model.config().dims();
    let names: Vec<String> = (0..d.layers as usize).map(|l| Point::name_of(l, over.site())).collect();
    let (clean_out, clean_cache) = run_with_cache(model, clean, &Names::parse(&names.join(","))?, ANALYSIS_BUDGET)?;
    let clean_value = metric.per_row(&logits(clean_out)?, &text_batch(clean)?.targets)?[0];
    let corrupt_value = mean_metric(model, &[text_batch(corrupt)?], metric, || Ok(vec![]))?;
    let gap = clean_value - corrupt_value;
    if !(gap.abs() > 1e-6) {
        return invalid!(
            "the metric is {clean_value:.4} on both texts: there is no difference for patching to restore; choose texts (or tokens) the model tells apart"
        );
    }
    let (width, along) = if over == PatchOver::Heads { (d.heads, Along::Head) } else { (tc, Along::Position) };
    let corrupt = text_batch(corrupt)?;
    let mut restored = vec![];
    for name in &names {
        let value = cached(&clean_cache, name)?;
        let patched = walk_rows(model, &corrupt, width, name, along, || Action::Replace(value.shallow_clone()), metric)?;
        restored.push(patched.into_iter().map(|p| (p - corrupt_value) / gap).collect());
    }
    Ok(Patching { clean: clean_value, corrupt: corrupt_value, restored })
}

/// A per-head attention score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadScore {
    /// Attention from each token of a repeated sequence's second copy to the token after
    /// its first occurrence (Olsson et al., 2022).
    Induction,
    /// Attention to the previous token.
    PreviousToken,
    /// Attention to the first token.
    FirstToken,
}

/// What [`head_scores`] found.
#[derive(Debug, Clone)]
pub struct HeadScores {
    /// `[layer][head]`, each in [0, 1].
    pub scores: Vec<Vec<f64>>,
    /// Mean loss on the first copy of the random tokens.
    pub first_loss: f64,
    /// Mean loss on the repeat: low when the model has induction heads.
    pub repeat_loss: f64,
}

/// `batch` sequences of `prefix` (a start-of-text token, when the model has one) then
/// `length` random tokens from `lo..hi`, twice.
pub fn repeated_tokens(prefix: Option<i64>, length: i64, batch: i64, lo: i64, hi: i64, seed: u64) -> Result<Tensor> {
    if !(1..=4096).contains(&length) || !(1..=256).contains(&batch) || lo >= hi {
        return invalid!("repeated random tokens need a length in 1..=4096 and a batch in 1..=256, got {length} and {batch}");
    }
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        // splitmix64: reproducible without a random-number crate.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut ids = vec![];
    for _ in 0..batch {
        let random: Vec<i64> = (0..length).map(|_| lo + (next() % (hi - lo) as u64) as i64).collect();
        ids.extend(prefix);
        ids.extend(&random);
        ids.extend(&random);
    }
    Ok(Tensor::from_slice(&ids).f_view([batch, -1])?)
}

/// Per-head scores of `kind` on `ids: (B, prefix + 2 × length)`, sequences repeated
/// after `prefix` tokens, and the loss on each copy.
pub fn head_scores(model: &Model, ids: &Tensor, prefix: i64, kind: HeadScore) -> Result<HeadScores> {
    let (b, t) = (ids.size()[0], ids.size()[1]);
    let length = (t - prefix) / 2;
    if length < 2 || prefix + 2 * length != t {
        return invalid!("head scores read a sequence repeated once after {prefix} start token(s); {t} tokens is not that");
    }
    let language_model = model.task() == Task::LanguageModel;
    // Sums over rows, in passes of about TOKENS_PER_PASS tokens through (empty) hooks,
    // so that an interrupt is answered within one pass's operation.
    let (mut sums, mut first, mut repeat): (Vec<Tensor>, f64, f64) = (vec![], 0.0, 0.0);
    let chunk = rows_per_pass(t, b);
    for start in (0..b).step_by(chunk as usize) {
        crate::interrupt::check("scoring heads")?;
        let rows = ids.f_narrow(0, start, chunk.min(b - start))?.f_to_device(model.device())?;
        let hooks = Hooks::new();
        let opts = ForwardOptions { capture_attention: true, hooks: Some(&hooks), ..Default::default() };
        let out = tch::no_grad(|| model.forward(&rows, None, &opts, None))?;
        for (layer, pattern) in out.attentions.as_deref().unwrap_or_default().iter().enumerate() {
            let p = pattern.f_to_kind(Kind::Double)?; // (B, nh, T, T)
            let stripe = match kind {
                HeadScore::Induction => p.f_diagonal(1 - length, -2, -1)?.f_narrow(-1, prefix + 1, length)?,
                HeadScore::PreviousToken => p.f_diagonal(-1, -2, -1)?,
                HeadScore::FirstToken => p.f_select(-1, 0)?.f_narrow(-1, 1, t - 1)?,
            };
            let per_head = stripe.f_mean_dim([2].as_slice(), false, Kind::Double)?.f_sum_dim_intlist([0].as_slice(), false, Kind::Double)?;
            match sums.get_mut(layer) {
                Some(sum) => *sum = sum.f_add(&per_head)?,
                None => sums.push(per_head),
            }
        }
        if let (true, Some(logits)) = (language_model, out.logits) {
            let (loss, _) = token_losses(&logits, &text_batch(&rows)?.targets)?; // (B, T): position j predicting token j + 1
            let span = |from: i64, n: i64| -> Result<f64> {
                Ok(loss.f_narrow(1, from, n)?.f_mean_dim([1].as_slice(), false, Kind::Double)?.f_sum(Kind::Double)?.double_value(&[]))
            };
            first += span(prefix, length - 1)?;
            repeat += span(prefix + length, length - 1)?;
        }
    }
    let scores = sums.iter().map(|s| Ok(Vec::<f64>::try_from(s.f_div_scalar(b as f64)?.f_to_device(tch::Device::Cpu)?)?)).collect::<Result<Vec<_>>>()?;
    let (first_loss, repeat_loss) = if language_model { (first / b as f64, repeat / b as f64) } else { (f64::NAN, f64::NAN) };
    Ok(HeadScores { scores, first_loss, repeat_loss })
}

/// Direct logit attribution of one token's logit at the last position.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct Attribution {
    /// The token's id.
    #[serde(rename = "id")]
    pub target: i64,
    /// Its logit.
    pub logit: f64,
    /// The share of the embeddings (the stream entering block 0).
    pub embed: f64,
    /// Each block's attention output.
    pub attn: Vec<f64>,
    /// Each block's MLP output.
    pub mlp: Vec<f64>,
    /// `[layer][head]`: each head's output (the attention's bias is in `attn` only).
    pub heads: Vec<Vec<f64>>,
    /// What the final norm's shift adds (LayerNorm); the parts sum to `logit` with it.
    pub norm_bias: f64,
}

/// Direct logit attribution of token `target` at the last position of `ids: (1, T)`:
/// each component's output through the final norm frozen at the last layer's scale.
pub fn attribute(model: &Model, ids: &Tensor, target: i64) -> Result<Attribution> {
    let readout = readout(model, "attribution")?;
    let vocab = model.config().vocab_size();
    if !(0..vocab).contains(&target) {
        return invalid!("token id {target} is outside the vocabulary 0..{}", vocab - 1);
    }
    let layers = model.config().dims().layers as usize;
    let mut names = vec![Point::name_of(0, Site::ResidPre), Point::name_of(layers - 1, Site::ResidPost)];
    for l in 0..layers {
        names.extend([Point::name_of(l, Site::AttnOut), Point::name_of(l, Site::MlpOut), Point::name_of(l, Site::HeadResult)]);
    }
    let (out, cache) = run_with_cache(model, ids, &Names::parse(&names.join(","))?, ANALYSIS_BUDGET)?;
    let last = |name: &str| -> Result<Tensor> { Ok(cached(&cache, name)?.f_select(1, -1)?.f_get(0)?.f_to_kind(Kind::Float)?) };
    let scale = readout.scale(&last(&names[1])?)?; // (1,)
    let direction = readout.direction(target)?;
    let share = |x: &Tensor| -> Result<f64> { Ok(readout.centre(x)?.f_div(&scale)?.f_mul(&direction)?.f_sum(Kind::Double)?.double_value(&[])) };
    let share_rows = |x: &Tensor| -> Result<Vec<f64>> {
        let values = readout.centre(x)?.f_div(&scale)?.f_matmul(&direction)?;
        Ok(Vec::<f64>::try_from(values.f_to_kind(Kind::Double)?.f_to_device(tch::Device::Cpu)?)?)
    };
    let (mut attn, mut mlp, mut heads) = (vec![], vec![], vec![]);
    for l in 0..layers {
        attn.push(share(&last(&Point::name_of(l, Site::AttnOut))?)?);
        mlp.push(share(&last(&Point::name_of(l, Site::MlpOut))?)?);
        heads.push(share_rows(&last(&Point::name_of(l, Site::HeadResult))?)?); // (nh, C) rows
    }
    let logit = logits(out)?.f_select(1, -1)?.f_get(0)?.f_get(target)?.double_value(&[]);
    Ok(Attribution { target, logit, embed: share(&last(&names[0])?)?, attn, mlp, heads, norm_bias: readout.bias_logit(target)? })
}
