//! Adapting a model without retraining all of it: `%lora` adds, lists, switches,
//! merges and drops LoRA adapters ([`crate::models::lora`]) on whatever model is
//! loaded. The adapters' weights train like any weight; everything else is frozen.

use schemars::JsonSchema;
use serde::Serialize;

use super::model::group_digits;
use super::{flag, opt_pos, pairs, returns, Command};
use crate::models::lora::{AdaptedLayer, Init, LoraConfig, Targets};
use crate::models::Model;
use crate::session::output::{Bundle, CellError, Table};
use crate::session::parse::Args;
use crate::session::{Ctx, Session};

pub const LORA: Command = Command {
    name: "lora",
    summary: "add LoRA adapters to the model's linear layers, list them, switch them on or off, merge them into the weights, or drop them",
    args: &[
        opt_pos("action", "on | off | merge | drop (none: add adapters with the settings given, or list them)").choices(&["on", "off", "merge", "drop"]),
        pairs("r=8 alpha=16 dropout=0.05 targets=q_proj,v_proj (or all-linear, or a regular expression over module paths)"),
        flag("rslora", "scale by alpha/√r instead of alpha/r (rsLoRA)"),
    ],
    details: "As peft's LoraConfig: A starts Kaiming-uniform and B at zero, so the model is unchanged until it trains; the update is scaled by alpha/r; \
              dropout acts on the adapter's input only. Targets are names (a module whose path is the name or ends with `.name`), \
              `all-linear` (every linear layer but the output head) or a regular expression the whole path must match. \
              Everything but the adapters is frozen: training updates the adapters alone, with an optimiser that holds nothing for the base. \
              `off` and `on` switch them without losing them; `merge` folds them into the weights as peft's merge_and_unload does; \
              `drop` removes them, leaving the base as it was. `%save DIR --adapter` writes them as peft does.",
    example: "%lora r=8 alpha=16 targets=q_proj,v_proj",
    returns: returns::<Lora>(),
    run: lora,
};

/// The settings `%lora` takes.
const KEYS: &[&str] = &["r", "alpha", "dropout", "targets"];

fn lora(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let action = args.get("action");
    if action.is_some() && (!args.pairs.is_empty() || args.flag("rslora")) {
        return Err(args.usage_error(format!("`%lora {}` takes no settings; settings go with `%lora` alone, which adds adapters", action.unwrap_or_default())));
    }
    let (what, layers) = match action {
        Some("on") | Some("off") => {
            let on = action == Some("on");
            s.change_model_in_place(|m| m.set_lora_enabled(on))?;
            (if on { "on" } else { "off" }, s.model_or_err()?.lora_layers())
        }
        Some("merge") => {
            let layers = s.model_or_err()?.lora_layers();
            s.change_model("lora merge", |m| m.merge_lora())?;
            ("merged", layers)
        }
        Some("drop") => {
            let layers = s.model_or_err()?.lora_layers();
            s.change_model("lora drop", |m| m.drop_lora())?;
            ("dropped", layers)
        }
        _ if args.pairs.is_empty() && !args.flag("rslora") => ("listed", s.model_or_err()?.lora_layers()),
        _ => {
            let config = settings(s.model_or_err()?, args)?;
            // The adapters' first values are drawn from the session's seed, so that a
            // notebook run twice adapts alike.
            tch::manual_seed(s.seed as i64);
            let summary = format!("lora r={} alpha={} targets={}", config.r, config.alpha, config.targets);
            let layers = s.change_model(&summary, |m| m.add_lora(&config, Init::Default))?;
            ("added", layers)
        }
    };
    let model = s.model_or_err()?;
    let result = Lora::of(model, what, layers);
    ctx.returns(result.bundle(), &result);
    Ok(())
}

/// The adapters' settings from `%lora`'s pairs, with peft's defaults and the family's
/// usual targets where a setting is not given.
fn settings(model: &Model, args: &Args) -> Result<LoraConfig, CellError> {
    let mut config = LoraConfig { targets: Targets::Names(model.config().family().lora_targets.iter().map(|t| t.to_string()).collect()), ..Default::default() };
    for (key, value) in &args.pairs {
        let number = |what: &str| value.parse::<f64>().map_err(|_| args.usage_error(format!("{key}= expects {what}, got `{value}`")));
        match key.as_str() {
            "r" => config.r = value.parse().map_err(|_| args.usage_error(format!("r= expects a whole number, got `{value}`")))?,
            "alpha" => config.alpha = number("a number")?,
            "dropout" => config.dropout = number("a number in [0, 1)")?,
            "targets" => config.targets = Targets::parse(value)?,
            other => {
                return Err(args.usage_error(format!(
                    "%lora takes {}; `{other}` is not one{}",
                    KEYS.join(", "),
                    crate::suggest::did_you_mean(other, KEYS.iter().copied())
                )))
            }
        }
    }
    config.rslora = args.flag("rslora");
    config.validate()?;
    Ok(config)
}

/// What `%lora` returns: the adapters and what they cost against the whole model.
#[derive(Serialize, JsonSchema)]
pub struct Lora {
    /// What was done: `added`, `listed`, `on`, `off`, `merged` or `dropped`.
    pub action: String,
    /// The adapted layers (those merged or dropped, for `merged` and `dropped`).
    pub layers: Vec<AdaptedLayer>,
    /// Whether the adapters are on (false when there are none).
    pub enabled: bool,
    /// Their settings, when there are adapters: `r`, `alpha`, `dropout`, `targets`, `rslora`.
    pub settings: Option<serde_json::Value>,
    /// Parameters that train now.
    pub trainable: i64,
    /// Parameters in all.
    pub total: i64,
    /// `trainable / total`.
    pub share: f64,
    /// What training keeps per parameter that trains (gradient and AdamW's two moments, float32), for what trains now, bytes.
    pub optimizer_bytes: i64,
    /// The same for full fine-tuning of every parameter, bytes.
    pub full_optimizer_bytes: i64,
}

/// Gradient and the two AdamW moments, float32.
const TRAINING_BYTES_PER_PARAMETER: i64 = 12;

impl Lora {
    fn of(model: &Model, action: &str, layers: Vec<AdaptedLayer>) -> Lora {
        let (trainable, total) = (model.num_trainable(), model.num_parameters());
        let adapters = model.adapters();
        Lora {
            action: action.to_string(),
            layers,
            enabled: adapters.is_some_and(|a| a.enabled),
            settings: adapters.map(|a| serde_json::to_value(&a.config).expect("settings serialise")),
            trainable,
            total,
            share: trainable as f64 / total.max(1) as f64,
            optimizer_bytes: trainable * TRAINING_BYTES_PER_PARAMETER,
            full_optimizer_bytes: total * TRAINING_BYTES_PER_PARAMETER,
        }
    }

    fn bundle(&self) -> Bundle {
        let mib = |b: i64| crate::limits::format_bytes(b as f64);
        let head = match self.action.as_str() {
            "listed" if self.layers.is_empty() => return Bundle::text("no LoRA adapters: `%lora r=8` adds them (`%lora?` for the settings)"),
            "merged" => format!("merged the adapters of {} layers into their weights; the model has no adapters now", self.layers.len()),
            "dropped" => format!("dropped the adapters of {} layers; the model is as it was before `%lora`", self.layers.len()),
            "on" | "off" => format!("LoRA adapters {} ({} layers)", self.action, self.layers.len()),
            _ => {
                let number = |v: &serde_json::Value| v.as_f64().map_or_else(|| v.to_string(), |x| x.to_string());
                let settings = self.settings.as_ref().map_or(String::new(), |s| {
                    format!(
                        "r={} alpha={} dropout={} targets={}{}",
                        s["r"],
                        number(&s["alpha"]),
                        number(&s["dropout"]),
                        targets_text(&s["targets"]),
                        if s["rslora"] == true { " rslora" } else { "" }
                    )
                });
                format!("LoRA {settings} on {} layers{}", self.layers.len(), if self.enabled { "" } else { " (off)" })
            }
        };
        let cost = format!(
            "trainable: {} of {} parameters ({:.3} %); gradients and AdamW moments {} against {} for full fine-tuning",
            group_digits(self.trainable),
            group_digits(self.total),
            100.0 * self.share,
            mib(self.optimizer_bytes),
            mib(self.full_optimizer_bytes)
        );
        if matches!(self.action.as_str(), "merged" | "dropped") {
            return Bundle::text(format!("{head}\n{cost}"));
        }
        // One row per kind of layer (`q_proj` in every block), in the model's order.
        let mut kinds: Vec<(&str, [i64; 2], i64, f64, usize, i64)> = vec![];
        for l in &self.layers {
            let kind = l.layer.rsplit('.').next().unwrap_or(&l.layer);
            match kinds.iter_mut().find(|k| k.0 == kind && k.1 == l.shape && k.2 == l.r) {
                Some(k) => {
                    k.4 += 1;
                    k.5 += l.parameters;
                }
                None => kinds.push((kind, l.shape, l.r, l.scaling, 1, l.parameters)),
            }
        }
        let mut table = Table::new(["layer", "layers", "shape", "r", "scaling", "parameters"]);
        for (kind, shape, r, scaling, count, parameters) in kinds {
            table.row([
                kind.to_string(),
                count.to_string(),
                format!("{} × {}", shape[0], shape[1]),
                r.to_string(),
                format!("{scaling:.4}"),
                group_digits(parameters),
            ]);
        }
        table.bundle_under(&format!("{head}\n{cost}"))
    }
}

/// `q_proj,v_proj`, `all-linear`, or the pattern, from the settings' JSON.
fn targets_text(targets: &serde_json::Value) -> String {
    serde_json::from_value::<Targets>(targets.clone()).map_or_else(|_| targets.to_string(), |t| t.to_string())
}
