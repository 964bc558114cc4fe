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

/// The attention probabilities of every layer for one text.
pub(crate) struct AttentionMaps {
    /// The text's tokens as people read them: each map's rows (queries) and columns (keys).
    pub tokens: Vec<String>,
    /// The same tokens as the vocabulary spells them.
    pub pieces: Vec<String>,
    /// One `(1, heads, tokens, tokens)` tensor per layer.
    maps: Vec<tch::Tensor>,
}

impl AttentionMaps {
    /// Runs `model` over `text` once, keeping its attention probabilities.
    pub fn of(model: &crate::models::Model, tokenizer: &crate::tokenize::Tokenizer, text: &str) -> crate::Result<Self> {
        let (ids, pieces): (Vec<i64>, Vec<String>) = tokenizer.encode_tokens(text)?.into_iter().unzip();
        if ids.is_empty() {
            return crate::error::invalid!("the text has no tokens");
        }
        let tokens = tokenizer.readable_tokens(&ids);
        let ids = tch::Tensor::from_slice(&ids).unsqueeze(0).to_device(model.device());
        let opts = crate::models::ForwardOptions { capture_attention: true, ..Default::default() };
        let maps = tch::no_grad(|| -> crate::Result<Vec<tch::Tensor>> { Ok(model.forward(&ids, None, &opts, None)?.attentions.unwrap_or_default()) })?;
        if maps.is_empty() {
            return crate::error::invalid!("this model has no attention layers to show");
        }
        Ok(AttentionMaps { tokens, pieces, maps })
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
        crate::plot::attention_map(&self.rows(layer, head), &self.tokens, &format!("layer {layer}, head {head}"))
    }

    /// A grid of maps: the given layers (rows) by the given heads (columns).
    pub fn grid_figure(&self, layers: &[i64], heads: &[i64]) -> crate::Result<crate::plot::Figure> {
        let maps: Vec<Vec<Vec<Vec<f64>>>> = layers.iter().map(|&l| heads.iter().map(|&h| self.rows(l, h)).collect()).collect();
        let title = format!("attention: {} layer(s) × {} head(s), {} tokens", layers.len(), heads.len(), self.tokens.len());
        crate::plot::attention_grid(&maps, &self.tokens, &title)
    }
}
