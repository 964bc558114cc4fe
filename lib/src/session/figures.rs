//! Figures several commands draw or write: the loss plot of training histories, the
//! attention maps of a text, and a figure saved to a file.

use crate::checkpoint::find::expand_home;
use crate::plot::{ema, line_chart, LineChart, Series};
use crate::train::History;

/// The loss figure of `runs`: raw (faint), smoothed, validation points.
pub(crate) fn loss_figure(runs: &[(&str, &History)], smooth: f64, log_y: bool) -> crate::Result<crate::plot::Figure> {
    let mut series = vec![];
    for (name, h) in runs {
        let raw: Vec<(f64, f64)> = h.steps.iter().map(|r| (r.step as f64, r.loss)).collect();
        if smooth > 0.0 {
            let ys: Vec<f64> = raw.iter().map(|p| p.1).collect();
            series.push(Series { name: name.to_string(), points: raw.clone(), markers: false, faint: true });
            series.push(Series {
                name: name.to_string(),
                points: raw.iter().zip(ema(&ys, smooth)).map(|((x, _), y)| (*x, y)).collect(),
                markers: false,
                faint: false,
            });
        } else {
            series.push(Series { name: name.to_string(), points: raw, markers: false, faint: false });
        }
        let val: Vec<(f64, f64)> = h.steps.iter().filter_map(|r| r.val.as_ref().map(|v| (r.step as f64, v.loss))).collect();
        if !val.is_empty() {
            series.push(Series { name: name.to_string(), points: val, markers: true, faint: false });
        }
    }
    line_chart(&LineChart { title: "training loss".into(), x_label: "step".into(), y_label: "loss".into(), log_x: false, log_y, series })
}

/// Writes a figure to `path`: SVG for `.svg`, PNG otherwise; missing directories are made.
pub(crate) fn save_figure(figure: &crate::plot::Figure, path: &str) -> crate::Result<()> {
    let path = expand_home(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    }
    let bytes = if path.extension().is_some_and(|e| e == "svg") { figure.svg.clone().into_bytes() } else { figure.png.clone() };
    crate::atomic::write(&path, |w| std::io::Write::write_all(w, &bytes))
}

/// Which attention of an encoder–decoder `%attention` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttentionKind {
    /// The encoder's self-attention over the source.
    Encoder,
    /// The decoder's self-attention over the target it generated.
    Decoder,
    /// The decoder's target tokens (rows) over the source tokens (columns).
    Cross,
}

impl AttentionKind {
    /// Reads `--kind`.
    pub fn parse(kind: &str) -> crate::Result<Self> {
        match kind {
            "encoder" => Ok(AttentionKind::Encoder),
            "decoder" => Ok(AttentionKind::Decoder),
            "cross" => Ok(AttentionKind::Cross),
            other => crate::error::invalid!("--kind is encoder, decoder or cross, got `{other}`"),
        }
    }

    /// Its name, as `--kind` spells it.
    pub fn name(self) -> &'static str {
        match self {
            AttentionKind::Encoder => "encoder",
            AttentionKind::Decoder => "decoder",
            AttentionKind::Cross => "cross",
        }
    }
}

/// The tokens an encoder–decoder's decoder writes for a source, to show its attention:
/// at most this many.
const SHOWN_TARGET_TOKENS: usize = 32;

/// The attention probabilities of every layer for one text.
pub(crate) struct AttentionMaps {
    /// The queries' tokens as people read them: each map's rows.
    pub tokens: Vec<String>,
    /// The same tokens as the vocabulary spells them.
    pub pieces: Vec<String>,
    /// The keys' tokens, each map's columns: the source's in cross-attention, else the
    /// queries'.
    pub keys: Vec<String>,
    /// On an encoder–decoder, which of its attentions these are.
    pub kind: Option<AttentionKind>,
    /// One `(1, heads, queries, keys)` tensor per layer.
    maps: Vec<tch::Tensor>,
}

impl AttentionMaps {
    /// Runs `model` over `text` once, keeping its attention probabilities. On an
    /// encoder–decoder, `text` is the source, the decoder generates greedily from it, and
    /// `kind` (default: cross-attention) chooses the maps; other models have one kind.
    pub fn of(model: &crate::models::Model, tokenizer: &crate::tokenize::Tokenizer, text: &str, kind: Option<AttentionKind>) -> crate::Result<Self> {
        let (ids, pieces): (Vec<i64>, Vec<String>) = tokenizer.encode_tokens(text)?.into_iter().unzip();
        if ids.is_empty() {
            return crate::error::invalid!("the text has no tokens");
        }
        if model.task() == crate::models::Task::Seq2Seq {
            return Self::of_seq2seq(model, tokenizer, &ids, pieces, kind.unwrap_or(AttentionKind::Cross));
        }
        if let Some(kind) = kind {
            return crate::error::invalid!("--kind {} is for encoder–decoders; this {} model has one attention", kind.name(), model.config().model_type());
        }
        let tokens = tokenizer.readable_tokens(&ids);
        let ids = tch::Tensor::from_slice(&ids).unsqueeze(0).to_device(model.device());
        let opts = crate::models::ForwardOptions { capture_attention: true, ..Default::default() };
        let maps = tch::no_grad(|| -> crate::Result<Vec<tch::Tensor>> { Ok(model.forward(&ids, None, &opts, None)?.attentions.unwrap_or_default()) })?;
        if maps.is_empty() {
            return crate::error::invalid!("this model has no attention layers to show");
        }
        Ok(AttentionMaps { keys: tokens.clone(), tokens, pieces, kind: None, maps })
    }

    /// An encoder–decoder's maps: the decoder writes up to [`SHOWN_TARGET_TOKENS`]
    /// greedily, then one pass reads the source and, teacher-forced, that target, keeping
    /// the encoder's maps and the cross-attention's through their hook points and the
    /// decoder's own as captured maps. Each row is the decoder's input at a step (its
    /// start token, then what it wrote), as transformers' `cross_attentions` are.
    fn of_seq2seq(
        model: &crate::models::Model,
        tokenizer: &crate::tokenize::Tokenizer,
        source: &[i64],
        source_pieces: Vec<String>,
        kind: AttentionKind,
    ) -> crate::Result<Self> {
        use crate::models::hooks::{Hooks, Names};
        let config = model.config();
        let start = config.decoder_start_token_id().unwrap_or(config.pad_token_id());
        let room = (config.max_positions() as usize).saturating_sub(1).clamp(1, SHOWN_TARGET_TOKENS);
        let opts = crate::generate::GenerateOptions { max_new_tokens: room, stop_ids: config.eos_token_ids(), ..Default::default() };
        let written = crate::generate::generate(model, source, &opts)?;
        let target: Vec<i64> = std::iter::once(start).chain(written.iter().copied().take(written.len().saturating_sub(1))).collect();
        let pattern = match kind {
            AttentionKind::Encoder => "encoder.*.attn.hook_pattern",
            _ => "decoder.*.cross_attn.hook_pattern",
        };
        let hooks = Hooks::new().cache(Names::one(pattern), 1 << 30);
        let opts = crate::models::ForwardOptions { capture_attention: kind == AttentionKind::Decoder, hooks: Some(&hooks), ..Default::default() };
        let device = model.device();
        let decoder_maps = tch::no_grad(|| -> crate::Result<Vec<tch::Tensor>> {
            let mut cache = model.encode_source(&tch::Tensor::from_slice(source).unsqueeze(0).to_device(device), None, &opts)?;
            let out = model.forward(&tch::Tensor::from_slice(&target).unsqueeze(0).to_device(device), None, &opts, Some(&mut cache))?;
            Ok(out.attentions.unwrap_or_default())
        })?;
        let hooked: Vec<tch::Tensor> = hooks.finish()?.cache.into_iter().map(|(_, t)| t).collect();
        let (source_tokens, target_tokens) = (tokenizer.readable_tokens(source), tokenizer.readable_tokens(&target));
        let target_pieces: Vec<String> = target.iter().map(|&id| tokenizer.piece(id)).collect();
        let (tokens, pieces, keys, maps) = match kind {
            AttentionKind::Encoder => (source_tokens.clone(), source_pieces, source_tokens, hooked),
            AttentionKind::Decoder => (target_tokens.clone(), target_pieces, target_tokens, decoder_maps),
            AttentionKind::Cross => (target_tokens, target_pieces, source_tokens, hooked),
        };
        Ok(AttentionMaps { tokens, pieces, keys, kind: Some(kind), maps })
    }

    /// Layers.
    pub fn layers(&self) -> i64 {
        self.maps.len() as i64
    }

    /// Heads per layer.
    pub fn heads(&self) -> i64 {
        self.maps[0].size()[1]
    }

    /// One head's map: a row per query, summing to one.
    pub fn rows(&self, layer: i64, head: i64) -> Vec<Vec<f64>> {
        let map = self.maps[layer as usize].get(0).get(head).to_kind(tch::Kind::Double).to_device(tch::Device::Cpu);
        Vec::<Vec<f64>>::try_from(map).expect("a 2-D map")
    }

    /// One head's map as a figure.
    pub fn head_figure(&self, layer: i64, head: i64) -> crate::Result<crate::plot::Figure> {
        crate::plot::attention_map(&self.rows(layer, head), &self.tokens, &self.keys, &format!("{}layer {layer}, head {head}", self.kind_label()))
    }

    /// A grid of maps: the given layers (rows) by the given heads (columns).
    pub fn grid_figure(&self, layers: &[i64], heads: &[i64]) -> crate::Result<crate::plot::Figure> {
        let maps: Vec<Vec<Vec<Vec<f64>>>> = layers.iter().map(|&l| heads.iter().map(|&h| self.rows(l, h)).collect()).collect();
        let title = format!("{}attention: {} layer(s) × {} head(s), {} tokens", self.kind_label(), layers.len(), heads.len(), self.tokens.len());
        crate::plot::attention_grid(&maps, &self.tokens, &self.keys, &title)
    }

    /// `"cross "` and the like, before a title, for an encoder–decoder's maps.
    fn kind_label(&self) -> String {
        self.kind.map_or(String::new(), |k| format!("{} ", k.name()))
    }
}
