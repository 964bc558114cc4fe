//! Hook points: every activation of every family's forward pass, named as
//! TransformerLens names them (`blocks.3.attn.hook_z`), and the one mechanism that reads
//! them (a cache with a name filter and a memory budget) and writes them (zero, scale,
//! replace with another run's value or a mean; per batch row, head or position).
//!
//! A family calls [`ForwardOptions::hook`] at each point. Without [`Hooks`] that is one
//! branch and the tensor passes through untouched, so a forward pass without hooks costs
//! what it did before (`make bench` shows it). With hooks, the point's name is made,
//! edits whose pattern matches are applied in order, and the result is cached when the
//! filter takes it: a cache holds what the rest of the model saw.
//!
//! Tensors are shown in TransformerLens's layouts: the residual stream and MLP
//! activations `(batch, pos, d)`, queries, keys, values and `z` `(batch, pos, head,
//! d_head)` (keys and values with the key/value heads of grouped-query attention),
//! `hook_pattern` `(batch, head, query_pos, key_pos)`, `hook_result` `(batch, pos, head,
//! d_model)`. The analyses built on this (logit lens, ablation, patching, head scores,
//! attribution) are in [`crate::inspect`].

use std::cell::RefCell;

use tch::{Kind, Tensor};

use super::ForwardOptions;
use crate::error::{invalid, Error, Result};

/// Where in a block (or around the blocks) an activation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// `hook_embed`: the token embeddings.
    Embed,
    /// `hook_pos_embed`: learned position embeddings (GPT-2, BERT).
    PosEmbed,
    /// `hook_token_type_embed`: BERT's token-type embeddings.
    TokenTypeEmbed,
    /// `blocks.L.hook_resid_pre`: the residual stream entering the block.
    ResidPre,
    /// `blocks.L.ln1.hook_normalized`: the attention's normalised input (pre-norm
    /// families), or the normalised stream after attention (BERT, post-norm).
    Ln1Normalized,
    /// `blocks.L.attn.hook_q`: queries, before rotary embeddings.
    Q,
    /// `blocks.L.attn.hook_k`: keys, before rotary embeddings.
    K,
    /// `blocks.L.attn.hook_v`: values.
    V,
    /// `blocks.L.attn.hook_rot_q`: queries after rotary embeddings.
    RotQ,
    /// `blocks.L.attn.hook_rot_k`: keys after rotary embeddings.
    RotK,
    /// `blocks.L.attn.hook_pattern`: attention probabilities.
    Pattern,
    /// `blocks.L.attn.hook_z`: each head's weighted values, before the output projection.
    Z,
    /// `blocks.L.attn.hook_result`: each head's output in the residual stream (without
    /// the output bias); computed only when a hook asks for it.
    HeadResult,
    /// `blocks.L.hook_attn_out`: the attention's output.
    AttnOut,
    /// `blocks.L.hook_resid_mid`: the stream after the attention's residual add.
    ResidMid,
    /// `blocks.L.ln2.hook_normalized`: the MLP's normalised input (pre-norm families),
    /// or the block's normalised output (BERT).
    Ln2Normalized,
    /// `blocks.L.mlp.hook_pre`: the MLP's first projection (the gate in gated MLPs).
    MlpPre,
    /// `blocks.L.mlp.hook_pre_linear`: the gated MLP's linear ("up") projection.
    MlpPreLinear,
    /// `blocks.L.mlp.hook_post`: the MLP's hidden activations.
    MlpPost,
    /// `blocks.L.hook_mlp_out`: the MLP's output.
    MlpOut,
    /// `blocks.L.hook_resid_post`: the stream leaving the block.
    ResidPost,
    /// `ln_final.hook_normalized`: the final norm's output, read by the unembedding.
    LnFinal,
    /// `decoder.L.ln2.hook_normalized` is the cross-attention's normalised input in an
    /// encoder–decoder; `decoder.L.ln3.hook_normalized` is the MLP's.
    Ln3Normalized,
    /// `decoder.L.hook_cross_attn_out`: the cross-attention's output.
    CrossAttnOut,
    /// `decoder.L.hook_resid_mid_cross`: the stream after the cross-attention's add.
    ResidMidCross,
    /// `encoder_final_ln.hook_normalized`: the encoder's output, which the decoder's
    /// cross-attention reads.
    EncoderFinalLn,
    /// `decoder_final_ln.hook_normalized`: the decoder's final norm, read by the
    /// unembedding.
    DecoderFinalLn,
}

/// How a site's tensor is laid out, as hooks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `(batch, pos, d)`.
    Stream,
    /// `(batch, pos, head, d_head)`; families hand it over as `(batch, head, pos, d_head)`.
    Heads,
    /// `(batch, head, query_pos, key_pos)`.
    Pattern,
    /// `(batch, pos, head, d_model)`.
    HeadResult,
}

impl Site {
    fn suffix(self) -> &'static str {
        match self {
            Site::Embed => "hook_embed",
            Site::PosEmbed => "hook_pos_embed",
            Site::TokenTypeEmbed => "hook_token_type_embed",
            Site::ResidPre => "hook_resid_pre",
            Site::Ln1Normalized => "ln1.hook_normalized",
            Site::Q => "attn.hook_q",
            Site::K => "attn.hook_k",
            Site::V => "attn.hook_v",
            Site::RotQ => "attn.hook_rot_q",
            Site::RotK => "attn.hook_rot_k",
            Site::Pattern => "attn.hook_pattern",
            Site::Z => "attn.hook_z",
            Site::HeadResult => "attn.hook_result",
            Site::AttnOut => "hook_attn_out",
            Site::ResidMid => "hook_resid_mid",
            Site::Ln2Normalized => "ln2.hook_normalized",
            Site::MlpPre => "mlp.hook_pre",
            Site::MlpPreLinear => "mlp.hook_pre_linear",
            Site::MlpPost => "mlp.hook_post",
            Site::MlpOut => "hook_mlp_out",
            Site::ResidPost => "hook_resid_post",
            Site::LnFinal => "ln_final.hook_normalized",
            Site::Ln3Normalized => "ln3.hook_normalized",
            Site::CrossAttnOut => "hook_cross_attn_out",
            Site::ResidMidCross => "hook_resid_mid_cross",
            Site::EncoderFinalLn => "encoder_final_ln.hook_normalized",
            Site::DecoderFinalLn => "decoder_final_ln.hook_normalized",
        }
    }

    fn layout(self) -> Layout {
        match self {
            Site::Q | Site::K | Site::V | Site::RotQ | Site::RotK | Site::Z => Layout::Heads,
            Site::Pattern => Layout::Pattern,
            Site::HeadResult => Layout::HeadResult,
            _ => Layout::Stream,
        }
    }
}

/// Which stack of blocks a point is in: the one stack of a decoder or an encoder
/// (`blocks.L`), or one of an encoder–decoder's two (`encoder.L`, `decoder.L`, and the
/// decoder's cross-attention `decoder.L.cross_attn`), as TransformerLens's
/// `HookedEncoderDecoder` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// `blocks.L`.
    Blocks,
    /// `encoder.L`.
    Encoder,
    /// `decoder.L`.
    Decoder,
    /// `decoder.L`, with the attention sites under `cross_attn` instead of `attn`.
    Cross,
}

/// A block of a stack: where an attention or a block's sites are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockId {
    /// The stack.
    pub stack: Stack,
    /// The block, from 0.
    pub layer: usize,
}

impl BlockId {
    /// The point at `site` in this block.
    pub fn at(self, site: Site) -> Point {
        Point { stack: self.stack, layer: Some(self.layer), site }
    }
}

impl From<usize> for BlockId {
    /// Block `layer` of the one stack.
    fn from(layer: usize) -> Self {
        BlockId { stack: Stack::Blocks, layer }
    }
}

/// One hook point: a site, in a block or outside the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// The stack the block is in.
    pub stack: Stack,
    /// The block, for sites inside one.
    pub layer: Option<usize>,
    /// What the activation is.
    pub site: Site,
}

impl Point {
    /// A point outside the blocks (embeddings, the final norm).
    pub fn outside(site: Site) -> Self {
        Point { stack: Stack::Blocks, layer: None, site }
    }

    /// A point in block `layer`.
    pub fn block(layer: usize, site: Site) -> Self {
        Point { stack: Stack::Blocks, layer: Some(layer), site }
    }

    /// Its TransformerLens name.
    pub fn name(self) -> String {
        let Some(l) = self.layer else { return self.site.suffix().to_string() };
        match self.stack {
            Stack::Blocks => format!("blocks.{l}.{}", self.site.suffix()),
            Stack::Encoder => format!("encoder.{l}.{}", self.site.suffix()),
            Stack::Decoder => format!("decoder.{l}.{}", self.site.suffix()),
            Stack::Cross => format!("decoder.{l}.cross_{}", self.site.suffix()),
        }
    }

    /// The name of `site` in `layer`, for callers that build names to match.
    pub fn name_of(layer: usize, site: Site) -> String {
        Point::block(layer, site).name()
    }
}

/// Hook names to match: comma-separated patterns where `*` stands for any run of
/// characters (`blocks.*.hook_resid_post`, `*hook_pattern`, `blocks.3.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names(Vec<String>);

impl Names {
    /// Every hook point.
    pub fn all() -> Self {
        Names(vec!["*".into()])
    }

    /// Reads `a,b*,c`; empty patterns are an error.
    pub fn parse(patterns: &str) -> Result<Self> {
        let parts: Vec<String> = patterns.split(',').map(|p| p.trim().to_string()).collect();
        if parts.iter().any(String::is_empty) {
            return invalid!("hook names `{patterns}` contain an empty pattern; give names like `blocks.*.hook_resid_post`, separated by commas");
        }
        Ok(Names(parts))
    }

    /// One exact name (or pattern).
    pub fn one(name: impl Into<String>) -> Self {
        Names(vec![name.into()])
    }

    /// Whether `name` matches one of the patterns.
    pub fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|p| glob(p, name))
    }

    /// The patterns that match none of `names`.
    fn unmatched<'a>(&'a self, names: &[String]) -> Vec<&'a str> {
        self.0.iter().filter(|p| !names.iter().any(|n| glob(p, n))).map(String::as_str).collect()
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut i, mut j, mut star, mut resume) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some(i);
            resume = j;
            i += 1;
        } else if i < p.len() && p[i] == n[j] {
            i += 1;
            j += 1;
        } else if let Some(s) = star {
            i = s + 1;
            resume += 1;
            j = resume;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

/// What an edit puts in place of the selected part of an activation.
#[derive(Debug)]
pub enum Action {
    /// Zeros.
    Zero,
    /// The activation times a factor.
    Scale(f64),
    /// Another tensor: another run's activation of the same shape (patching), or one
    /// that broadcasts to it, such as a mean over a data set `(1, 1, ...)`.
    Replace(Tensor),
}

/// An axis that [`Edit::walk`] steps along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Along {
    /// Positions (for `hook_pattern`, queries).
    Position,
    /// Heads.
    Head,
}

/// One write: at every point whose name matches, the selected part of the activation
/// is replaced.
#[derive(Debug)]
pub struct Edit {
    /// The points it applies to.
    pub names: Names,
    /// Only this batch row.
    pub row: Option<i64>,
    /// Only this head (sites with a head axis).
    pub head: Option<i64>,
    /// Only this position (negative counts from the end); for `hook_pattern`, the query.
    pub position: Option<i64>,
    /// Batch row `r` edits only position (or head) `start + r`: one pass tries every
    /// position or head at once (activation patching).
    pub walk: Option<(Along, i64)>,
    /// What goes in.
    pub action: Action,
}

impl Edit {
    /// `action` on the whole activation at the points `names`.
    pub fn new(names: Names, action: Action) -> Self {
        Edit { names, row: None, head: None, position: None, walk: None, action }
    }

    /// Only head `head`.
    pub fn head(self, head: i64) -> Self {
        Edit { head: Some(head), ..self }
    }

    /// Only position `position`.
    pub fn position(self, position: i64) -> Self {
        Edit { position: Some(position), ..self }
    }

    /// Only batch row `row`.
    pub fn row(self, row: i64) -> Self {
        Edit { row: Some(row), ..self }
    }

    /// Row `r` edits only position (or head) `start + r`.
    pub fn walk(self, along: Along, start: i64) -> Self {
        Edit { walk: Some((along, start)), ..self }
    }
}

/// The hooks of one forward pass: edits, and a cache when one is asked for. Pass it in
/// [`ForwardOptions::hooks`], then take what it collected with [`Hooks::finish`].
#[derive(Debug, Default)]
pub struct Hooks {
    edits: Vec<Edit>,
    cache: Option<(Names, u64)>,
    state: RefCell<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Every point visited, with its shape as hooks see it.
    seen: Vec<(String, Vec<i64>)>,
    cached: Vec<(String, Tensor)>,
    /// Bytes the filter took, including what did not fit the budget.
    wanted_bytes: u64,
    over_budget: bool,
}

/// What a forward pass with hooks collected.
#[derive(Debug)]
pub struct Collected {
    /// The cached activations, in the order the forward pass made them.
    pub cache: Vec<(String, Tensor)>,
    /// Every hook point of the model, with its shape in this run.
    pub points: Vec<(String, Vec<i64>)>,
}

impl Hooks {
    /// Hooks that change nothing and cache nothing: a forward pass with them lists the
    /// model's hook points.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an edit (edits apply in the order added).
    pub fn edit(mut self, edit: Edit) -> Self {
        self.edits.push(edit);
        self
    }

    /// Caches the activations whose names match `names`, refusing (after the pass) if
    /// they would take more than `budget_bytes`.
    pub fn cache(mut self, names: Names, budget_bytes: u64) -> Self {
        self.cache = Some((names, budget_bytes));
        self
    }

    /// Whether a forward pass must compute the activation at `point` (one only made on
    /// request, such as attention probabilities or per-head results).
    pub fn touches(&self, point: Point) -> bool {
        let name = point.name();
        self.edits.iter().any(|e| e.names.matches(&name)) || self.cache.as_ref().is_some_and(|(n, _)| n.matches(&name))
    }

    /// What the pass collected. Errors when a pattern matched no hook point (naming the
    /// closest ones) or when the cache would exceed its budget (with the number).
    pub fn finish(self) -> Result<Collected> {
        let state = self.state.into_inner();
        let names: Vec<String> = state.seen.iter().map(|(n, _)| n.clone()).collect();
        let patterns = self.edits.iter().map(|e| &e.names).chain(self.cache.as_ref().map(|(n, _)| n));
        for pattern in patterns {
            if let Some(missing) = pattern.unmatched(&names).first() {
                let close = crate::suggest::did_you_mean(missing, names.iter().map(String::as_str));
                let example = names.iter().find(|n| n.starts_with("blocks.0.")).map_or(String::new(), |n| format!(", such as `{n}`"));
                return invalid!("no hook point is named `{missing}`{close}; this model has {} hook points{example}", names.len());
            }
        }
        if state.over_budget {
            let budget = self.cache.as_ref().map_or(0, |(_, b)| *b);
            return Err(Error::TooLarge(format!(
                "caching these activations takes {}, over the cache budget of {}; cache fewer names (`--names blocks.*.hook_resid_post`), a shorter text, or raise the budget",
                crate::limits::format_bytes(state.wanted_bytes as f64),
                crate::limits::format_bytes(budget as f64)
            )));
        }
        Ok(Collected { cache: state.cached, points: state.seen })
    }

    /// Runs the edits on `x` at `point` and caches the result when asked.
    fn visit(&self, point: Point, x: Tensor) -> Result<Tensor> {
        let name = point.name();
        let layout = point.site.layout();
        let mut shown = if layout == Layout::Heads { x.f_transpose(1, 2)? } else { x };
        for edit in self.edits.iter().filter(|e| e.names.matches(&name)) {
            shown = apply(edit, &shown, layout, &name)?;
        }
        // Analyses run long passes through hooks: each point is a place to stop.
        crate::interrupt::check("running the model")?;
        let mut state = self.state.borrow_mut();
        state.seen.push((name.clone(), shown.size()));
        if let Some((names, budget)) = &self.cache {
            if names.matches(&name) {
                let bytes = (shown.numel() * shown.kind().elt_size_in_bytes()) as u64;
                state.wanted_bytes = state.wanted_bytes.saturating_add(bytes);
                if state.wanted_bytes > *budget {
                    state.over_budget = true;
                    state.cached.clear();
                } else if !state.over_budget {
                    state.cached.push((name, shown.f_detach()?));
                }
            }
        }
        drop(state);
        Ok(if layout == Layout::Heads { shown.f_transpose(1, 2)? } else { shown })
    }
}

/// The selected part of `x` replaced as `edit` says.
fn apply(edit: &Edit, x: &Tensor, layout: Layout, name: &str) -> Result<Tensor> {
    let size = x.size();
    let position_axis: usize = if layout == Layout::Pattern { 2 } else { 1 };
    let head_axis = match layout {
        Layout::Heads | Layout::HeadResult => Some(2),
        Layout::Pattern => Some(1),
        Layout::Stream => None,
    };
    let replacement = match &edit.action {
        Action::Zero => x.f_zeros_like()?,
        Action::Scale(factor) => x.f_mul_scalar(*factor)?,
        Action::Replace(other) => {
            let other = other.f_to_device(x.device())?.f_to_kind(x.kind())?;
            if !broadcasts(&other.size(), &size) {
                return invalid!("`{name}` has shape {size:?}; the tensor given to put there has shape {:?}, which does not fit it", other.size());
            }
            other.f_expand_as(x)?
        }
    };
    let mut selection = vec![];
    if let Some(row) = edit.row {
        selection.push((0, row, "batch row"));
    }
    if let Some(head) = edit.head {
        let Some(axis) = head_axis else {
            return invalid!("`{name}` has no head axis; per-head edits go to `attn.hook_z`, `attn.hook_pattern`, `attn.hook_q/k/v` or `attn.hook_result`");
        };
        selection.push((axis, head, "head"));
    }
    if let Some(position) = edit.position {
        selection.push((position_axis, position, "position"));
    }
    let mut mask: Option<Tensor> = None;
    if let Some((along, start)) = edit.walk {
        let axis = match along {
            Along::Position => position_axis,
            Along::Head => head_axis.ok_or_else(|| Error::Invalid(format!("`{name}` has no head axis to walk along")))?,
        };
        let (rows, n) = (size[0], size[axis]);
        if start < 0 || start + rows > n {
            return invalid!("rows {start}..{} walk past `{name}`, which has {n} along that axis (shape {size:?})", start + rows);
        }
        let wanted = Tensor::f_arange_start(start, start + rows, (Kind::Int64, x.device()))?.f_unsqueeze(1)?;
        let mut shape = vec![1; size.len()];
        (shape[0], shape[axis]) = (rows, n);
        mask = Some(Tensor::f_arange(n, (Kind::Int64, x.device()))?.f_unsqueeze(0)?.f_eq_tensor(&wanted)?.f_view(shape.as_slice())?);
    }
    for (axis, index, what) in selection {
        let n = size[axis];
        let i = if index < 0 { index + n } else { index };
        if !(0..n).contains(&i) {
            return invalid!("{what} {index} is outside `{name}`, which has {n} along that axis (shape {size:?})");
        }
        let mut shape = vec![1; size.len()];
        shape[axis] = n;
        let one_hot = Tensor::f_arange(n, (Kind::Int64, x.device()))?.f_eq(i)?.f_view(shape.as_slice())?;
        mask = Some(match mask {
            Some(m) => m.f_logical_and(&one_hot)?,
            None => one_hot,
        });
    }
    Ok(match mask {
        Some(mask) => replacement.f_where_self(&mask, x)?,
        None => replacement,
    })
}

/// Whether a tensor of shape `from` broadcasts to `to` (same rank).
fn broadcasts(from: &[i64], to: &[i64]) -> bool {
    from.len() == to.len() && from.iter().zip(to).all(|(&f, &t)| f == t || f == 1)
}

impl ForwardOptions<'_> {
    /// Passes `x` through the hooks at `point` (see [`Hooks`]); without hooks, returns it.
    #[inline]
    pub(crate) fn hook(&self, point: Point, x: Tensor) -> Result<Tensor> {
        match self.hooks {
            None => Ok(x),
            Some(h) => h.visit(point, x),
        }
    }

    /// Whether an activation made only on request is wanted at `point`.
    #[inline]
    pub(crate) fn touches(&self, point: Point) -> bool {
        self.hooks.is_some_and(|h| h.touches(point))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_shells_do() {
        assert!(glob("blocks.*.hook_resid_post", "blocks.11.hook_resid_post"));
        assert!(glob("*hook_pattern", "blocks.0.attn.hook_pattern"));
        assert!(glob("*", ""));
        assert!(!glob("blocks.1.*", "blocks.11.hook_z"));
        assert!(glob("blocks.1*", "blocks.11.hook_z"));
        assert!(!glob("hook_embed", "hook_pos_embed"));
    }

    #[test]
    fn edits_select_rows_heads_and_positions() {
        let x = Tensor::ones([2, 3, 4, 5], (Kind::Float, tch::Device::Cpu)); // (batch, pos, head, d_head)
        let edit = Edit::new(Names::one("z"), Action::Zero).head(1).position(-1).row(0);
        let y = apply(&edit, &x, Layout::Heads, "z").unwrap();
        assert_eq!(y.sum(Kind::Float).double_value(&[]), 120.0 - 5.0);
        assert_eq!(y.get(0).get(2).get(1).sum(Kind::Float).double_value(&[]), 0.0);
        let far = Edit::new(Names::one("z"), Action::Zero).head(4);
        assert!(apply(&far, &x, Layout::Heads, "z").unwrap_err().to_string().contains("head 4 is outside"));
        let walk = Edit::new(Names::one("z"), Action::Zero).walk(Along::Position, 1);
        let y = apply(&walk, &x, Layout::Heads, "z").unwrap(); // row 0 position 1, row 1 position 2
        assert_eq!(y.sum(Kind::Float).double_value(&[]), 120.0 - 40.0);
        assert_eq!(y.get(0).get(1).sum(Kind::Float).double_value(&[]) + y.get(1).get(2).sum(Kind::Float).double_value(&[]), 0.0);
        assert!(apply(&Edit::new(Names::one("z"), Action::Zero).walk(Along::Head, 3), &x, Layout::Heads, "z").is_err(), "rows 3..5 of 4 heads");
        let wrong = Edit::new(Names::one("z"), Action::Replace(Tensor::ones([2, 3, 4, 6], (Kind::Float, tch::Device::Cpu))));
        assert!(apply(&wrong, &x, Layout::Heads, "z").unwrap_err().to_string().contains("does not fit"));
    }
}
