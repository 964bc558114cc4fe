//! Generation, attention maps, embeddings, similarity and prediction.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use tch::{Kind, Tensor};

use super::{option, pos, rest, returns, Command};
use crate::beam::{BeamOptions, EarlyStopping};
use crate::embedding::{embed, pad_batch};
use crate::models::{ForwardOptions, Task};
use crate::session::figures::{AttentionKind, AttentionMaps};
use crate::session::output::{Bundle, CellError, Table};
use crate::session::parse::Args;
use crate::session::{Ctx, Session};

pub const GENERATE: Command = Command {
    name: "generate",
    summary: "continue a prompt (an encoder–decoder answers it as its source): greedy, sampled or beam search",
    args: &[
        pos("prompt", "the text to continue (quote it)"),
        option("max-tokens", "N", "the most tokens to add (default 32)"),
        option("temperature", "T", "0 for greedy (default), higher for more varied text"),
        option("top-k", "K", "sample among the K likeliest tokens"),
        option("top-p", "P", "sample among the likeliest tokens totalling P"),
        option("seed", "S", "seed for sampling"),
        option(
            "beams",
            "N",
            "beam search with N beams (2 to 64), as transformers' num_beams, instead of greedy or sampling (default: the model's generation config; 1 for greedy)",
        ),
        option(
            "length-penalty",
            "L",
            "beam search: a hypothesis's log-probability is divided by its length to the power L (default 1; above 0 favours longer ones)",
        ),
        option("no-repeat-ngram", "N", "never repeat an n-gram of N tokens, the prompt's included (default: the model's generation config)"),
        option("return", "N", "beam search: how many finished hypotheses to show, best first (default: all N)"),
        option("early-stopping", "WHEN", "beam search: false (the default heuristic), true (once N hypotheses end) or never"),
    ],
    details: "Stops at the end-of-text token or after --max-tokens. The text appears as it is made; the result says how many tokens came, how fast. \
              With --beams N the search keeps the N best continuations at every step and shows the N best finished ones with their scores \
              (summed log-probability / length^L), exactly as transformers' generate(num_beams=N) finds them. \
              What the command does not say comes from the model's generation_config.json, as for transformers' generate(): \
              beams, lengths, the length penalty, early stopping, n-gram bans, bad words, forced first and last tokens.",
    example: "%generate \"314159=\" --max-tokens 6",
    returns: returns::<Generated>(),
    run: generate,
};

fn generate(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let prompt = args.get("prompt").expect("required");
    let tokenizer = s.tokenizer_or_err()?;
    let model = s.model_or_err()?;
    let stop = crate::session::generation::text_stop_ids(model, tokenizer);
    let opts = crate::session::generation::generation_options(args, model, stop, 32)?;
    let prompt_ids = tokenizer.encode(prompt)?;
    let sampling = ["temperature", "top-k", "top-p", "seed"].into_iter().find(|option| args.get(option).is_some());
    let defaults = &model.generation;
    // The config's beams are the default unless the command asks for sampling.
    let beams = match args.parse_as::<usize>("beams")? {
        Some(beams) => Some(beams),
        None if sampling.is_none() => defaults.num_beams.filter(|&n| n > 1).map(|n| n as usize),
        None => None,
    };
    if beams == Some(0) {
        return Err(args.usage_error("--beams must be at least 1 (1: greedy or sampling, 2 to 64: beam search), got 0"));
    }
    if let Some(beams) = beams.filter(|&n| n != 1) {
        if let Some(sampling) = sampling {
            return Err(args.usage_error(format!("beam search does not sample: --{sampling} is for sampling without --beams")));
        }
        let early_stopping = match args.get("early-stopping") {
            None => defaults.early_stopping().unwrap_or(EarlyStopping::Heuristic),
            Some("false") => EarlyStopping::Heuristic,
            Some("true") => EarlyStopping::AtOnce,
            Some("never") => EarlyStopping::Never,
            Some(other) => return Err(args.usage_error(format!("--early-stopping is false, true or never, got `{other}`"))),
        };
        let constraints = opts.constraints.clone();
        let search = BeamOptions {
            beams,
            max_new_tokens: opts.max_new_tokens,
            length_penalty: args.parse_as("length-penalty")?.or(defaults.length_penalty).unwrap_or(1.0),
            early_stopping,
            returns: args.parse_as("return")?.unwrap_or(beams.clamp(1, crate::beam::MAX_BEAMS)),
            stop_ids: opts.stop_ids.clone(),
            constraints,
        };
        let started = std::time::Instant::now();
        let found = crate::beam::beam_search(model, &prompt_ids, &search)?;
        let seconds = started.elapsed().as_secs_f64();
        let text_of = |ids: &[i64]| -> Result<String, CellError> {
            let end = if ids.last().is_some_and(|id| search.stop_ids.contains(id)) { ids.len() - 1 } else { ids.len() };
            Ok(tokenizer.decode(&ids[..end])?)
        };
        let hypotheses =
            found.iter().map(|h| Ok(BeamHypothesis { text: text_of(&h.ids)?, ids: h.ids.clone(), score: h.score })).collect::<Result<Vec<_>, CellError>>()?;
        let best = hypotheses.first().cloned().expect("a search ends with a hypothesis");
        let mut table = Table::new(["score", "text"]);
        for h in &hypotheses {
            table.row([format!("{:.4}", h.score), h.text.clone()]);
        }
        let head = format!("{prompt}{}\n[{beams} beams, {} tokens, {seconds:.2} s]", best.text, best.ids.len());
        let result = Generated { prompt_ids, generated_ids: best.ids, text: best.text, beams: Some(hypotheses) };
        ctx.returns(table.bundle_under(&head), &result);
        return Ok(());
    }
    for beam_only in ["length-penalty", "early-stopping", "return"] {
        if args.get(beam_only).is_some() {
            return Err(args.usage_error(format!("--{beam_only} is for beam search: add --beams N")));
        }
    }
    let reply = crate::session::generation::stream(model, tokenizer, prompt, &prompt_ids, &opts, ctx)?;
    let summary = reply.summary();
    ctx.returns(Bundle::text(summary), &Generated { prompt_ids, generated_ids: reply.ids, text: reply.text, beams: None });
    Ok(())
}

/// One hypothesis of `%generate --beams`.
#[derive(Clone, Serialize, JsonSchema)]
pub struct BeamHypothesis {
    /// Its new ids.
    pub ids: Vec<i64>,
    /// Their text, without the stop token.
    pub text: String,
    /// Summed log-probability / length^length_penalty.
    pub score: f64,
}

/// What `%generate` returns.
#[derive(Serialize, JsonSchema)]
pub struct Generated {
    /// The prompt's ids.
    pub prompt_ids: Vec<i64>,
    /// The new ids, the stop token included when one came.
    pub generated_ids: Vec<i64>,
    /// The new text, without the stop token.
    pub text: String,
    /// With --beams: every finished hypothesis, best first (the best is the one above).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beams: Option<Vec<BeamHypothesis>>,
}

pub const ATTENTION: Command = Command {
    name: "attention",
    summary: "attention heatmaps for a text: one head with token labels, or a layers × heads grid",
    args: &[
        pos("text", "the text (quote it)"),
        option("layer", "L", "one layer (with --head: one map)"),
        option("head", "H", "one head"),
        option("kind", "KIND", "encoder–decoders: encoder, decoder or cross (the default: target tokens over source tokens)")
            .choices(&["encoder", "decoder", "cross"]),
        option("save", "PATH", "also write the figure to a .png or .svg file"),
    ],
    details: "Rows are queries, columns keys; each row sums to one. Without --layer and --head, every head of every layer. \
              On an encoder–decoder (T5, BART, Marian) the text is the source: the decoder writes a target greedily, and --kind chooses the encoder's \
              self-attention over the source, the decoder's over the target, or the cross-attention, each target token's row over the source tokens.",
    example: "%attention \"the cat sat on the mat\" --layer 0 --head 1",
    returns: returns::<Attention>(),
    run: attention,
};

fn attention(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let text = args.get("text").expect("required");
    let kind = args.get("kind").map(AttentionKind::parse).transpose()?;
    let maps = AttentionMaps::of(s.model_or_err()?, s.tokenizer_or_err()?, text, kind)?;
    let (layers, heads) = (maps.layers(), maps.heads());
    let check = |name: &str, limit: i64| -> Result<Option<i64>, CellError> {
        match args.parse_as::<i64>(name)? {
            Some(v) if !(0..limit).contains(&v) => Err(args.usage_error(format!("--{name} must be in 0..{}, got {v}", limit - 1))),
            v => Ok(v),
        }
    };
    let (layer, head) = (check("layer", layers)?, check("head", heads)?);
    let (figure, caption, result) = match (layer, head) {
        (Some(l), Some(h)) => (
            maps.head_figure(l, h)?,
            format!("<figure: attention, layer {l}, head {h}, {} tokens>", maps.tokens.len()),
            Attention {
                tokens: maps.tokens.clone(),
                pieces: maps.pieces.clone(),
                keys: maps.keys.clone(),
                kind: maps.kind.map(|k| k.name().to_string()),
                layers: None,
                heads: None,
                layer: Some(l),
                head: Some(h),
                attention: Some(maps.rows(l, h)),
            },
        ),
        _ => {
            let chosen_layers: Vec<i64> = layer.map_or_else(|| (0..layers).collect(), |l| vec![l]);
            let chosen_heads: Vec<i64> = head.map_or_else(|| (0..heads).collect(), |h| vec![h]);
            (
                maps.grid_figure(&chosen_layers, &chosen_heads)?,
                format!("<figure: attention grid, {} layers × {} heads>", chosen_layers.len(), chosen_heads.len()),
                Attention {
                    tokens: maps.tokens.clone(),
                    pieces: maps.pieces.clone(),
                    keys: maps.keys.clone(),
                    kind: maps.kind.map(|k| k.name().to_string()),
                    layers: Some(layers),
                    heads: Some(heads),
                    layer: None,
                    head: None,
                    attention: None,
                },
            )
        }
    };
    if let Some(path) = args.get("save") {
        crate::session::figures::save_figure(&figure, path)?;
    }
    ctx.display(Bundle::text(caption).figure(&figure));
    ctx.returns(Bundle::text(format!("tokens: {:?}", result.tokens)), &result);
    Ok(())
}

/// What `%attention` returns: for one head, its map; for a grid, the model's size.
#[derive(Serialize, JsonSchema)]
pub struct Attention {
    /// The text's tokens as people read them (`␣` a space), the map's rows and columns.
    pub tokens: Vec<String>,
    /// The same tokens as the vocabulary spells them (`Ġcat`).
    pub pieces: Vec<String>,
    /// The columns' tokens: the source's in cross-attention, else the rows'.
    pub keys: Vec<String>,
    /// On an encoder–decoder, which attention: encoder, decoder or cross.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Grid: the model's layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<i64>,
    /// Grid: heads per layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heads: Option<i64>,
    /// One head: its layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<i64>,
    /// One head: its index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<i64>,
    /// One head: the attention of each query (row) to each key (column); rows sum to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention: Option<Vec<Vec<f64>>>,
}

fn embeddings(s: &Session, texts: &[String]) -> Result<Tensor, CellError> {
    let model = s.model_or_err()?;
    let tokenizer = s.tokenizer_or_err()?;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    Ok(embed(model, tokenizer, s.pooling.unwrap_or_default(), &texts)?)
}

pub const EMBED: Command = Command {
    name: "embed",
    summary: "sentence embeddings from the encoder, pooled as the checkpoint says",
    args: &[rest("texts", "one or more texts (quote each)")],
    details: "Pooling and normalisation follow the checkpoint's sentence-transformers files (mean pooling, normalised, when it has none).",
    example: "%embed \"the cat sat\" \"a dog ran\"",
    returns: returns::<Embedded>(),
    run: embed_command,
};

fn embed_command(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let e = embeddings(s, args.rest())?;
    let rows: Vec<Vec<f64>> = Vec::try_from(e.to_kind(Kind::Double).to_device(tch::Device::Cpu)).expect("2-D");
    let preview: Vec<String> = args
        .rest()
        .iter()
        .zip(&rows)
        .map(|(t, r)| format!("{t:?}: [{}, ...] ({} dims)", r.iter().take(4).map(|v| format!("{v:.4}")).collect::<Vec<_>>().join(", "), r.len()))
        .collect();
    ctx.returns(Bundle::text(preview.join("\n")), &Embedded { texts: args.rest().to_vec(), embeddings: rows });
    Ok(())
}

/// What `%embed` returns.
#[derive(Serialize, JsonSchema)]
pub struct Embedded {
    /// The texts, in order.
    pub texts: Vec<String>,
    /// One embedding per text.
    pub embeddings: Vec<Vec<f64>>,
}

pub const SIMILARITY: Command = Command {
    name: "similarity",
    summary: "cosine similarity between the embeddings of texts",
    args: &[rest("texts", "two or more texts (quote each)")],
    details: "",
    example: "%similarity \"the cat sat\" \"a cat was sitting\" \"stock prices fell\"",
    returns: returns::<Similarity>(),
    run: similarity,
};

fn similarity(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    if args.rest().len() < 2 {
        return Err(args.usage_error("give at least two texts to compare"));
    }
    let e = embeddings(s, args.rest())?.to_kind(Kind::Double);
    let unit = &e / e.norm_scalaropt_dim(2.0, [-1].as_slice(), true).clamp_min(1e-12);
    let matrix: Vec<Vec<f64>> = Vec::try_from(unit.matmul(&unit.transpose(0, 1)).to_device(tch::Device::Cpu)).expect("2-D");
    let labels: Vec<String> = (1..=matrix.len()).map(|i| i.to_string()).collect();
    let mut table = Table::new(std::iter::once("text".to_string()).chain(labels.iter().cloned()));
    for (i, row) in matrix.iter().enumerate() {
        table.row(std::iter::once(format!("{} {:?}", i + 1, args.rest()[i])).chain(row.iter().map(|v| format!("{v:.3}"))));
    }
    ctx.returns(table.bundle(), &Similarity { texts: args.rest().to_vec(), matrix });
    Ok(())
}

/// What `%similarity` returns.
#[derive(Serialize, JsonSchema)]
pub struct Similarity {
    /// The texts, in order.
    pub texts: Vec<String>,
    /// The cosine similarity of every pair: `matrix[i][j]` for texts i and j.
    pub matrix: Vec<Vec<f64>>,
}

pub const PREDICT: Command = Command {
    name: "predict",
    summary: "classify a text with the classifier: the label and every class's probability",
    args: &[pos("text", "the text (quote it)")],
    details: "",
    example: "%predict \"what a wonderful film\"",
    returns: returns::<Prediction>(),
    run: predict,
};

fn predict(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let text = args.get("text").expect("required");
    let model = s.model_or_err()?;
    let Task::Classification { classes } = model.task() else {
        let hint = if model.task() == Task::LanguageModel { "" } else { ": `%load PATH --classes N` adds a classification head" };
        return Err(args.usage_error(format!("%predict needs a classifier; this {} model is not one{hint}", model.config().model_type())));
    };
    let config = model.config();
    let labels: Vec<String> = match s.trainer.as_ref().map(|t| t.data()) {
        Some(crate::data::Dataset::Classify(c)) => c.labels.clone(),
        _ => config.labels().filter(|l| l.len() as i64 == classes).unwrap_or_else(|| (0..classes).map(|i| format!("LABEL_{i}")).collect()),
    };
    let ids = s.tokenizer_or_err()?.encode(text)?;
    let (ids, mask) = pad_batch(&[ids], config.pad_token_id());
    let device = model.device();
    let out = tch::no_grad(|| model.forward(&ids.to_device(device), Some(&mask.to_device(device)), &ForwardOptions::default(), None))?;
    let probs: Vec<f64> = Vec::try_from(out.logits.expect("a classification head").softmax(-1, Kind::Double).get(0).to_device(tch::Device::Cpu)).expect("1-D");
    let best = probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
    let mut table = Table::new(["label", "probability"]);
    for (l, p) in labels.iter().zip(&probs) {
        table.row([l.clone(), format!("{p:.4}")]);
    }
    let prediction = Prediction { label: labels[best].clone(), probabilities: labels.iter().cloned().zip(probs.iter().copied()).collect() };
    ctx.returns(Bundle::text(format!("{}\n\n{}", labels[best], table.to_text())).html(table.to_html()), &prediction);
    Ok(())
}

/// What `%predict` returns.
#[derive(Serialize, JsonSchema)]
pub struct Prediction {
    /// The likeliest label.
    pub label: String,
    /// Every label's probability.
    pub probabilities: BTreeMap<String, f64>,
}
