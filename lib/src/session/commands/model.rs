//! Models, checkpoints and tokenizers.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use tch::Kind;

use super::{flag, opt_pos, option, pos, rest, returns, Command};
use crate::checkpoint;
use crate::checkpoint::find::{expand_home, find_model};
use crate::data::DataSpec;
use crate::limits::format_bytes;
use crate::models::bert::BertConfig;
use crate::models::gpt::GptConfig;
use crate::models::llama::LlamaConfig;
use crate::models::{Model, Task};
use crate::session::output::{Bundle, CellError, Table};
use crate::session::parse::Args;
use crate::session::{Ctx, Session};
use crate::tokenize::Tokenizer;
use crate::train::Trainer;

pub const MODEL: Command = Command {
    name: "model",
    summary: "build a new GPT, BERT, Llama-style, T5 or BART model, or show the current one",
    args: &[
        opt_pos("family", "gpt | bert | llama | t5 | bart").choices(&["gpt", "bert", "llama", "t5", "bart"]),
        option("layers", "N", "blocks (default 2; T5, BART: the encoder's)"),
        option("decoder-layers", "N", "T5, BART: the decoder's blocks (default: --layers)"),
        option("heads", "N", "attention heads (default 4)"),
        option("kv-heads", "N", "llama: key/value heads, dividing --heads (default: --heads; fewer is grouped-query attention)"),
        option("dim", "N", "width (default 64)"),
        option("ctx", "N", "context length (default: what the data needs, else 128)"),
        option("vocab", "N", "vocabulary size (default: the tokenizer's)"),
        option("dropout", "P", "dropout probability (default 0)"),
        option("classes", "N", "BERT: a classification head (default: the data's labels)"),
    ],
    details: "Without arguments, a summary: modules, parameters, dtype, device, memory. \
              T5 and BART are encoder–decoders (T5: v1.1's gated-GELU MLP, relative positions; BART: post-norm blocks, learned positions, \
              a GELU MLP of 4 × width); they train on source → target pairs (`%data synth reverse --seq2seq`), \
              the decoder starting from `=` when the tokenizer has one.",
    example: "%model gpt --layers 2 --heads 4 --dim 64",
    returns: returns::<ModelSummary>(),
    run: model,
};

fn model(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let Some(family) = args.get("family") else {
        return summary(s, ctx);
    };
    let number = |name: &str, default: i64| -> Result<i64, CellError> {
        let v = args.parse_as::<i64>(name)?.unwrap_or(default);
        if v < 1 {
            return Err(args.usage_error(format!("--{name} must be at least 1, got {v}")));
        }
        Ok(v)
    };
    let vocab = match (args.parse_as::<i64>("vocab")?, s.tokenizer()) {
        (Some(v), Some(t)) if v < t.vocab_size() as i64 => {
            return Err(args.usage_error(format!(
                "--vocab {v} is smaller than the tokenizer's {} ids, so some tokens would have no embedding; give --vocab {} or more, or leave it out",
                t.vocab_size(),
                t.vocab_size()
            )))
        }
        (Some(v), _) => v,
        (None, Some(t)) => t.vocab_size() as i64,
        (None, None) => return Err(args.usage_error("no tokenizer to size the vocabulary: give --vocab N, or load data or a tokenizer first")),
    };
    let needed_ctx = match &s.data {
        Some(DataSpec::Synth { task, length, symbols, .. }) => {
            crate::data::synth::Synth::new(crate::data::synth::Task::parse(task)?, *length, *symbols)?.example_len() as i64 - 1
        }
        _ => 128,
    };
    let (layers, heads, dim, ctx_len) = (number("layers", 2)?, number("heads", 4)?, number("dim", 64)?, number("ctx", needed_ctx)?);
    let dropout: f64 = args.parse_as("dropout")?.unwrap_or(0.0);
    if !(0.0..1.0).contains(&dropout) {
        return Err(args.usage_error(format!("--dropout must be in [0, 1), got {dropout}")));
    }
    tch::manual_seed(s.seed as i64);
    let built = match family {
        "gpt" => {
            let config = GptConfig {
                n_layer: layers,
                n_head: heads,
                n_embd: dim,
                resid_pdrop: dropout,
                embd_pdrop: dropout,
                attn_pdrop: dropout,
                ..GptConfig::tiny(vocab, ctx_len)
            };
            Model::new(config, Task::LanguageModel, s.device)
        }
        "t5" | "bart" => {
            let decoder_layers = number("decoder-layers", layers)?;
            let start = match s.tokenizer().map(|t| t.encode_corpus("=")) {
                Some(Ok(ids)) if ids.len() == 1 => ids[0],
                _ => 0,
            };
            if family == "t5" {
                let mut config = crate::models::t5::T5Config::small(vocab, layers, decoder_layers, heads, dim, start, ctx_len);
                config.dropout_rate = dropout;
                Model::new(config, Task::Seq2Seq, s.device)
            } else {
                let mut config = crate::models::bart::BartConfig::small(vocab, layers, decoder_layers, heads, dim, start, ctx_len);
                config.dropout = dropout;
                Model::new(config, Task::Seq2Seq, s.device)
            }
        }
        "llama" => {
            let kv_heads = number("kv-heads", heads)?;
            let mut config = LlamaConfig::small(vocab, ctx_len, layers, heads, kv_heads, dim);
            config.attention_dropout = dropout;
            Model::new(config, Task::LanguageModel, s.device)
        }
        _ => {
            let classes = match (args.parse_as::<i64>("classes")?, &s.data) {
                (Some(n), _) if n < 2 => return Err(args.usage_error(format!("--classes must be at least 2, got {n}"))),
                (Some(n), _) => Some(n),
                (None, Some(DataSpec::Classify { .. })) => s.trainer.as_ref().and_then(|t| match t.data() {
                    crate::data::Dataset::Classify(c) => Some(c.labels.len() as i64),
                    _ => None,
                }),
                _ => None,
            };
            let config: BertConfig = serde_json::from_value(serde_json::json!({
                "vocab_size": vocab, "hidden_size": dim, "num_hidden_layers": layers, "num_attention_heads": heads,
                "intermediate_size": 4 * dim, "max_position_embeddings": ctx_len,
                "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout,
            }))
            .map_err(|e| args.usage_error(e.to_string()))?;
            let task = classes.map_or(Task::Encoder { pooler: true }, |classes| Task::Classification { classes });
            Model::new(config, task, s.device)
        }
    };
    let built = built.map_err(|e| match e {
        crate::Error::Invalid(message) => args.usage_error(message),
        other => CellError::from(other),
    })?;
    s.install_model(built, None, None, None, format!("%model {family}"), ctx)?;
    summary(s, ctx)
}

fn summary(s: &Session, ctx: &mut Ctx) -> Result<(), CellError> {
    let model = s.model_or_err()?;
    let mut groups: BTreeMap<String, i64> = BTreeMap::new();
    let mut order: Vec<String> = vec![];
    for (name, t) in model.named_tensors() {
        let parts: Vec<&str> = name.trim_start_matches("transformer.").split('.').collect();
        let key = match parts.as_slice() {
            [a, b, c, ..] if b.parse::<u32>().is_err() && c.parse::<u32>().is_ok() => format!("{a}.{b}.{c}"),
            [a, b, ..] if b.parse::<u32>().is_ok() => format!("{a}.{b}"),
            [a, ..] => a.to_string(),
            [] => name.clone(),
        };
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        *groups.entry(key).or_default() += t.numel() as i64;
    }
    let tensors = model.named_tensors();
    let kind = tensors.first().map_or(Kind::Float, |(_, t)| t.kind());
    let bytes: usize = tensors.iter().map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes()).sum();
    let mut table = Table::new(["module", "parameters"]);
    for k in &order {
        table.row([k.clone(), groups[k].to_string()]);
    }
    let total = model.num_parameters();
    table.row(["total".to_string(), total.to_string()]);
    let config = crate::checkpoint::hf_config(model);
    let head = format!(
        "{} model: {} parameters, {:?}, {}, {:.1} MiB",
        model.config().model_type(),
        group_digits(total),
        kind,
        crate::device::device_name(model.device()),
        bytes as f64 / (1 << 20) as f64
    );
    let summary = ModelSummary {
        model_type: model.config().model_type().to_string(),
        parameters: total,
        dtype: format!("{kind:?}"),
        device: crate::device::device_name(model.device()),
        memory_mb: bytes as f64 / (1 << 20) as f64,
        config,
        modules: order.iter().map(|k| ModuleSize { name: k.clone(), parameters: groups[k] }).collect(),
    };
    ctx.returns(Bundle::text(format!("{head}\n{}", table.to_text())).html(format!("<p>{head}</p>{}", table.to_html())), &summary);
    Ok(())
}

/// What `%model` returns: the model's summary.
#[derive(Serialize, JsonSchema)]
pub struct ModelSummary {
    /// The family (`gpt2`, `bert`, `llama`, ...).
    pub model_type: String,
    /// Parameters in all.
    pub parameters: i64,
    /// The weights' kind (`Float`, `BFloat16`).
    pub dtype: String,
    /// `cpu`, `cuda:0`.
    pub device: String,
    /// The weights' memory, MiB.
    pub memory_mb: f64,
    /// The configuration as `config.json` would hold it.
    pub config: serde_json::Value,
    /// Parameters per module, in the model's order.
    pub modules: Vec<ModuleSize>,
}

/// A module and its parameter count.
#[derive(Serialize, JsonSchema)]
pub struct ModuleSize {
    /// `wte`, `h.0`, `encoder.layer.3`.
    pub name: String,
    /// Its parameters.
    pub parameters: i64,
}

/// `1,234,567`.
pub(crate) fn group_digits(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub const LOAD: Command = Command {
    name: "load",
    summary: "load a Hugging Face model directory, a weights file, or a tchlab training checkpoint",
    args: &[
        pos("path", "directory, file, a name in ~/.cache/tchlab/models, or a Hugging Face id (org/name) in the Hugging Face cache").path(),
        option("classes", "N", "load a BERT encoder with a new N-class classification head"),
    ],
    details: "A directory saved by `%save` resumes training exactly (optimiser, schedule, data cursor, history). \
              A name that is not a path is looked up in $TCHLAB_MODELS (~/.cache/tchlab/models), then in the Hugging Face cache \
              ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub), offline, at the revision refs/main names. \
              Missing and unexpected tensors are reported; a shape mismatch is an error naming the tensor.",
    example: "%load ~/models/all-MiniLM-L6-v2",
    returns: returns::<Loaded>(),
    run: load,
};

fn load(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    // A model not found is a file error, as a path that does not exist is.
    let path = find_model(args.get("path").expect("required")).map_err(|e| match e {
        crate::Error::Invalid(message) => CellError { name: "FileError".into(), message },
        other => other.into(),
    })?;
    if checkpoint::peft::is_adapter(&path) {
        return load_adapter(s, &path, ctx);
    }
    if path.join("trainer.json").is_file() {
        let trainer = Trainer::load(&path, s.device)?;
        let step = trainer.step_count();
        let model = trainer.model();
        let loaded = Loaded {
            model_type: model.config().model_type().to_string(),
            parameters: model.num_parameters(),
            resumed_step: Some(step),
            loaded: None,
            missing: None,
            unexpected: None,
            path: path.clone(),
        };
        s.install_trainer(trainer, path.display().to_string());
        ctx.returns(Bundle::text(format!("resumed training checkpoint {} at step {step}", path.display())), &loaded);
        return Ok(());
    }
    let classes: Option<i64> = args.parse_as("classes")?;
    let loaded = match classes {
        None => checkpoint::load(&path, s.device)?,
        Some(n) if n >= 2 => checkpoint::load_classifier(&path, s.device, n)?,
        Some(n) => return Err(args.usage_error(format!("--classes must be at least 2, got {n}"))),
    };
    let report = loaded.report.clone();
    let model_type = loaded.model.config().model_type().to_string();
    let parameters = loaded.model.num_parameters();
    s.install_model(loaded.model, loaded.tokenizer, loaded.pooling, loaded.chat_template, path.display().to_string(), ctx)?;
    let mut text = format!("loaded {} ({model_type}, {} parameters): {} tensors", path.display(), group_digits(parameters), report.loaded);
    if !report.missing.is_empty() {
        text.push_str(&format!("\nnewly initialised (not in the checkpoint): {}", report.missing.join(", ")));
    }
    if !report.unexpected.is_empty() {
        text.push_str(&format!("\nunused (no place in this model): {}", report.unexpected.join(", ")));
    }
    let loaded = Loaded {
        path,
        model_type,
        parameters,
        resumed_step: None,
        loaded: Some(report.loaded),
        missing: Some(report.missing),
        unexpected: Some(report.unexpected),
    };
    ctx.returns(Bundle::text(text), &loaded);
    Ok(())
}

/// `%load` of a peft adapter directory: onto the model loaded, which must be its base.
fn load_adapter(s: &mut Session, path: &std::path::Path, ctx: &mut Ctx) -> Result<(), CellError> {
    let adapter = checkpoint::peft::read(path)?;
    if s.model().is_none() {
        let base = adapter.config.base_model_name_or_path.as_deref().map_or(String::new(), |b| format!(" (it was made for {b})"));
        return Err(CellError {
            name: "UsageError".into(),
            message: format!("{} is a LoRA adapter: `%load` its base model first{base}, then the adapter", path.display()),
        });
    }
    let tensors = 2 * adapter.weights.len();
    let layers = s.change_model(&format!("lora from {}", path.display()), |m| m.load_peft(adapter))?;
    let model = s.model_or_err()?;
    let text = format!(
        "applied the LoRA adapter {} to {} layers of the model ({} parameters train now)",
        path.display(),
        layers.len(),
        group_digits(model.num_trainable())
    );
    let loaded = Loaded {
        path: path.to_path_buf(),
        model_type: model.config().model_type().to_string(),
        parameters: model.num_parameters(),
        resumed_step: None,
        loaded: Some(tensors),
        missing: Some(vec![]),
        unexpected: Some(vec![]),
    };
    ctx.returns(Bundle::text(text), &loaded);
    Ok(())
}

/// What `%load` returns: a model (what was loaded, missing, unused) or a training
/// checkpoint (the step it resumed at).
#[derive(Serialize, JsonSchema)]
pub struct Loaded {
    /// Where it was found.
    pub path: std::path::PathBuf,
    /// The family.
    pub model_type: String,
    /// Parameters in all.
    pub parameters: i64,
    /// A training checkpoint: the step training resumes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_step: Option<i64>,
    /// A model: tensors read from the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded: Option<usize>,
    /// The model's tensors the file does not have (newly initialised).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<Vec<String>>,
    /// The file's tensors the model has no place for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unexpected: Option<Vec<String>>,
}

pub const SAVE: Command = Command {
    name: "save",
    summary: "save the model; with training state, a checkpoint that resumes exactly",
    args: &[
        pos("path", "directory").path(),
        flag("hf", "only the Hugging Face files (config, weights, tokenizer)"),
        flag("adapter", "only the LoRA adapters, as peft saves them (adapter_config.json, adapter_model.safetensors)"),
        option("type", "T", "FILE.gguf: the matrices' type, f32 (the default) | f16 | q8_0 | q4_0 | q4_1"),
    ],
    details: "The directory always holds config.json, model.safetensors and tokenizer.json, which `transformers` reads. \
              While training, it also holds the optimiser and trainer state (and the LoRA adapters, in peft's files under adapter/). \
              With --adapter, only the adapters: `PeftModel.from_pretrained` loads them onto the base, and so does `%load DIR`. \
              A model with adapters saves --hf once they are merged (`%lora merge`). \
              A path ending in .gguf writes one GGUF file that llama.cpp, Ollama and LM Studio run (Llama-style models with a byte-level \
              BPE tokenizer): the config, tokenizer and chat template in its metadata, matrices in --type. Saves are atomic.",
    example: "%save runs/reverse",
    returns: returns::<Saved>(),
    run: save,
};

fn save(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let path = expand_home(args.get("path").expect("required"));
    if path.extension().is_some_and(|e| e == "gguf") {
        return save_gguf(s, args, &path, ctx);
    }
    if args.get("type").is_some() {
        return Err(args.usage_error("--type is for GGUF files: name the file FILE.gguf"));
    }
    if args.flag("adapter") {
        if args.flag("hf") {
            return Err(args.usage_error("--adapter and --hf save different things: choose one"));
        }
        return save_adapter(s, &path, ctx);
    }
    if args.flag("hf") && s.model_or_err()?.adapters().is_some() {
        return Err(args.usage_error(
            "the model has LoRA adapters, which a Hugging Face model directory has no place for: `%lora merge` folds them into the weights first, or `%save DIR --adapter` saves them as peft does",
        ));
    }
    let resumable = s.trainer.is_some() && !args.flag("hf");
    match (&s.trainer, args.flag("hf")) {
        (Some(t), false) => t.save(&path)?,
        _ => checkpoint::save_hf(s.model_or_err()?, s.tokenizer(), &path)?,
    }
    let step = s.trainer.as_ref().map_or(0, Trainer::step_count);
    if resumable {
        s.saved_at = s.trainer.as_ref().map(|t| (t.branch().to_string(), step));
    }
    let what = if resumable { format!("training checkpoint at step {step} (resumes exactly with %load)") } else { "model (Hugging Face format)".into() };
    ctx.returns(Bundle::text(format!("saved {what} to {}", path.display())), &Saved { path, step, resumable, gguf: None });
    Ok(())
}

/// `%save FILE.gguf [--type T]`: one file llama.cpp runs.
fn save_gguf(s: &mut Session, args: &Args, path: &std::path::Path, ctx: &mut Ctx) -> Result<(), CellError> {
    if args.flag("hf") || args.flag("adapter") {
        return Err(args.usage_error("a .gguf path writes a GGUF file; --hf and --adapter write directories: choose one"));
    }
    let name = args.get("type").unwrap_or("f32");
    let Some((_, kind)) = crate::formats::quant::WRITABLE.iter().find(|(n, _)| *n == name) else {
        return Err(args.usage_error(format!("--type must be one of {}, got `{name}`", crate::formats::quant::WRITABLE.map(|(n, _)| n).join(", "))));
    };
    let source = s.model_source.as_deref().map(std::path::Path::new);
    let written = checkpoint::gguf_write::save(s.model_or_err()?, s.tokenizer(), s.conversation.template.as_ref(), source, path, *kind)?;
    let mut text = format!("saved a GGUF file ({}, {} tensors, {}) to {}", written.kind, written.tensors, format_bytes(written.bytes as f64), path.display());
    if !written.kept_f32.is_empty() {
        text.push_str(&format!("\n{} matrices stay f32: their rows do not split into blocks of 32 ({})", written.kept_f32.len(), written.kept_f32.join(", ")));
    }
    let step = s.trainer.as_ref().map_or(0, Trainer::step_count);
    ctx.returns(Bundle::text(text), &Saved { path: path.to_path_buf(), step, resumable: false, gguf: Some(written) });
    Ok(())
}

/// `%save DIR --adapter`: the adapters alone, in peft's files.
fn save_adapter(s: &mut Session, path: &std::path::Path, ctx: &mut Ctx) -> Result<(), CellError> {
    let model = s.model_or_err()?;
    let task_type = match model.task() {
        crate::models::Task::LanguageModel => "CAUSAL_LM",
        crate::models::Task::Classification { .. } => "SEQ_CLS",
        crate::models::Task::Encoder { .. } => "FEATURE_EXTRACTION",
        crate::models::Task::Seq2Seq => "SEQ_2_SEQ_LM",
    };
    let (config, weights) = model.peft_adapter(s.model_source.clone(), task_type)?;
    checkpoint::peft::write(path, &config, &weights)?;
    let step = s.trainer.as_ref().map_or(0, Trainer::step_count);
    let text = format!("saved the LoRA adapters of {} layers to {} (peft's format)", weights.len(), path.display());
    ctx.returns(Bundle::text(text), &Saved { path: path.to_path_buf(), step, resumable: false, gguf: None });
    Ok(())
}

/// What `%save` returns.
#[derive(Serialize, JsonSchema)]
pub struct Saved {
    /// The directory written.
    pub path: std::path::PathBuf,
    /// The step saved.
    pub step: i64,
    /// Whether `%load` resumes training from it exactly.
    pub resumable: bool,
    /// A GGUF file: what it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gguf: Option<checkpoint::gguf_write::Written>,
}

pub const TOKENIZER: Command = Command {
    name: "tokenizer",
    summary: "load a tokenizer.json, or build a character or BPE tokenizer from a text file",
    args: &[
        pos("source", "PATH (tokenizer.json or its directory) | char | bpe").path(),
        opt_pos("file", "the text file for char and bpe").path(),
        option("vocab", "N", "BPE vocabulary size"),
    ],
    details: "With a model loaded, the tokenizer's vocabulary must fit the model's.",
    example: "%tokenizer bpe corpus.txt --vocab 512",
    returns: returns::<TokenizerInfo>(),
    run: tokenizer,
};

fn tokenizer(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let source = args.get("source").expect("required");
    let file = || args.get("file").map(expand_home).ok_or_else(|| args.usage_error(format!("`%tokenizer {source}` needs a text FILE")));
    let (tokenizer, kind) = match source {
        "char" => {
            let path = file()?;
            let text = crate::limits::read_text(&path, crate::limits::MAX_TEXT_BYTES)?;
            (Tokenizer::char_level(&text)?, "char")
        }
        "bpe" => {
            let vocab: usize = args.parse_as("vocab")?.ok_or_else(|| args.usage_error("BPE needs --vocab N"))?;
            (Tokenizer::train_bpe(file()?, vocab)?, "bpe")
        }
        path => {
            let path = expand_home(path);
            let file = if path.is_dir() { path.join("tokenizer.json") } else { path };
            (Tokenizer::from_file(file)?, "tokenizer.json")
        }
    };
    let vocab = tokenizer.vocab_size();
    if let Some(m) = s.model() {
        if vocab as i64 > m.config().vocab_size() {
            return Err(args.usage_error(format!(
                "this tokenizer has {vocab} ids but the model's vocabulary only {}; build a new model with `%model gpt` after this",
                m.config().vocab_size()
            )));
        }
    }
    match (s.trainer.as_mut(), s.data.clone()) {
        (Some(t), Some(spec)) => t.replace_data(tokenizer, spec)?,
        _ => s.tokenizer = Some(tokenizer),
    }
    ctx.returns(Bundle::text(format!("tokenizer: {kind}, {vocab} ids")), &TokenizerInfo { kind: kind.to_string(), vocab });
    Ok(())
}

/// What `%tokenizer` returns.
#[derive(Serialize, JsonSchema)]
pub struct TokenizerInfo {
    /// `char`, `bpe` or `tokenizer.json`.
    pub kind: String,
    /// Its vocabulary size.
    pub vocab: usize,
}

pub const TOKENIZE: Command = Command {
    name: "tokenize",
    summary: "show the tokens and ids of a text",
    args: &[rest("text", "the text (quote it to keep spaces exact)")],
    details: "",
    example: "%tokenize \"the cat sat\"",
    returns: returns::<Tokens>(),
    run: tokenize,
};

fn tokenize(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let text = args.rest().join(" ");
    let tokenizer = s.tokenizer_or_err()?;
    let (ids, pieces): (Vec<i64>, Vec<String>) = tokenizer.encode_tokens(&text)?.into_iter().unzip();
    let readable = tokenizer.readable_tokens(&ids);
    let mut table = Table::new(["#", "token", "piece", "id"]);
    for (i, ((id, token), piece)) in ids.iter().zip(&readable).zip(&pieces).enumerate() {
        table.row([i.to_string(), token.clone(), piece.clone(), id.to_string()]);
    }
    let tokens = Tokens { tokens: readable, pieces, ids };
    ctx.returns(table.bundle(), &tokens);
    Ok(())
}

/// What `%tokenize` returns.
#[derive(Serialize, JsonSchema)]
pub struct Tokens {
    /// Each token as people read it (`␣` a space, `↵` a newline, `\xNN` a byte that is not a whole character).
    pub tokens: Vec<String>,
    /// Each token as the vocabulary spells it (`Ġcat`, `▁cat`, `<0x0A>`).
    pub pieces: Vec<String>,
    /// Each token's id.
    pub ids: Vec<i64>,
}

pub const WEIGHTS: Command = Command {
    name: "weights",
    summary: "statistics of the weights: shape, dtype, mean, std, min, max, norm",
    args: &[opt_pos("pattern", "part of a name, or a glob with *")],
    details: "",
    example: "%weights attn.c_attn",
    returns: returns::<Vec<WeightStats>>(),
    run: weights,
};

fn weights(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let pattern = args.get("pattern").unwrap_or("");
    let model = s.model_or_err()?;
    let mut table = Table::new(["name", "shape", "dtype", "mean", "std", "min", "max", "norm"]);
    let mut rows: Vec<WeightStats> = vec![];
    for (name, t) in model.named_tensors().into_iter().filter(|(n, _)| matches_pattern(n, pattern)) {
        let f = t.detach().to_kind(Kind::Double);
        let stat = |v: tch::Tensor| v.double_value(&[]);
        let (mean, std, min, max, norm) = (stat(f.mean(Kind::Double)), stat(f.std(true)), stat(f.min()), stat(f.max()), stat(f.norm()));
        let fmt = |v: f64| format!("{v:.4}");
        table.row([name.clone(), format!("{:?}", t.size()), format!("{:?}", t.kind()), fmt(mean), fmt(std), fmt(min), fmt(max), fmt(norm)]);
        rows.push(WeightStats { name, shape: t.size(), dtype: format!("{:?}", t.kind()), mean, std, min, max, norm });
    }
    if rows.is_empty() {
        return Err(args.usage_error(format!("no weight matches `{pattern}`; `%weights` lists them all")));
    }
    ctx.returns(table.bundle(), &rows);
    Ok(())
}

/// One weight's statistics, as `%weights` lists them.
#[derive(Serialize, JsonSchema)]
pub struct WeightStats {
    /// The tensor's Hugging Face name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its kind.
    pub dtype: String,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// L2 norm.
    pub norm: f64,
}

/// A substring, or a glob where `*` matches anything.
fn matches_pattern(name: &str, pattern: &str) -> bool {
    if !pattern.contains('*') {
        return name.contains(pattern);
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        match rest.find(part) {
            Some(at) if i > 0 || at == 0 || pattern.starts_with('*') => rest = &rest[at + part.len()..],
            _ => return false,
        }
    }
    pattern.ends_with('*') || rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_substrings_and_globs() {
        assert!(matches_pattern("transformer.h.0.attn.c_attn.weight", "c_attn"));
        assert!(matches_pattern("transformer.h.0.attn.c_attn.weight", "*.h.0.*weight"));
        assert!(!matches_pattern("transformer.h.1.attn.c_attn.weight", "*.h.0.*"));
        assert_eq!(group_digits(1234567), "1,234,567");
    }
}
