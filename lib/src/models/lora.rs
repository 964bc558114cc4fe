//! LoRA adapters on any model (Hu et al. 2021), as peft makes them: the chosen linear
//! layers get `A (r, in)` and `B (out, r)` beside their frozen weight, and compute
//! `W x + (alpha / r) · B A dropout(x)`. Everything else freezes: no gradient and no
//! optimiser state for the base. Switching adapters off, merging them into the
//! weights (`merge_and_unload`) and dropping them are exact.
//!
//! Which layers: peft's rules for `target_modules`
//! (<https://github.com/huggingface/peft/blob/5d602fdb/src/peft/tuners/tuners_utils.py>,
//! `check_target_module_exists`): a list of names matches a module whose path is the
//! name or ends with `.name`; a string is a regular expression matched against the
//! whole path; `all-linear` is every linear layer but the output head. Initialisation
//! as peft's default (`reset_lora_parameters`): A Kaiming-uniform with a = √5 (uniform
//! in ±1/√in), B zero, so that a new adapter changes nothing until it trains.
//!
//! The adapters' variables live in the model's store under `<layer>.lora_A.weight` and
//! `<layer>.lora_B.weight`, so the trainer, snapshots and checkpoints see them as they
//! see any weight; [`crate::checkpoint::peft`] reads and writes peft's files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::linear::{LinearHandle, LoraWeights, Role};
use super::Model;
use crate::error::{invalid, Error, Result};

/// The largest rank read from a file (the same bound `%lora` has).
pub const MAX_RANK: i64 = 1 << 14;

/// `target_modules` as the file has it.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// A list: exact names or path suffixes.
    Names(Vec<String>),
    /// A string: a regular expression the whole path must match (or `all-linear`).
    Pattern(String),
}

/// What `adapter_config.json` says, in peft's names.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftConfig {
    /// The rank.
    pub r: i64,
    /// The scale's numerator.
    pub lora_alpha: f64,
    /// Dropout on the adapter's input.
    pub lora_dropout: f64,
    /// Which modules.
    pub target_modules: TargetModules,
    /// Scale by `alpha / √r`.
    pub use_rslora: bool,
    /// Per-module ranks.
    pub rank_pattern: BTreeMap<String, i64>,
    /// Per-module alphas.
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Only these blocks.
    pub layers_to_transform: Option<Vec<i64>>,
    /// The base layer stores its weight `(in, out)` (GPT-2's Conv1D).
    pub fan_in_fan_out: bool,
    /// Where the base model came from.
    pub base_model_name_or_path: Option<String>,
    /// `CAUSAL_LM`, `SEQ_CLS`, ...
    pub task_type: Option<String>,
}

/// An adapter as read: its settings and each module's `(A, B)`.
pub struct Adapter {
    /// The settings.
    pub config: PeftConfig,
    /// Each module's weights, by its path in the Hugging Face model.
    pub weights: BTreeMap<String, (Tensor, Tensor)>,
}

/// Which layers get adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    /// Layers whose path is one of these names or ends with `.name`.
    Names(Vec<String>),
    /// A regular expression the whole path must match.
    Pattern(String),
    /// Every linear layer but the output head.
    AllLinear,
}

impl Targets {
    /// Reads `%lora`'s `targets=`: `all-linear`; a regular expression when it holds
    /// any of `*+?()[]|\^$`; otherwise names separated by commas.
    pub fn parse(text: &str) -> Result<Targets> {
        let text = text.trim();
        if text == "all-linear" {
            return Ok(Targets::AllLinear);
        }
        if text.chars().any(|c| "*+?()[]{}|\\^$".contains(c)) {
            return Ok(Targets::Pattern(text.to_string()));
        }
        let names: Vec<String> = text.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_string).collect();
        if names.is_empty() {
            return invalid!("targets= names no layer; give names such as `q_proj,v_proj`, `all-linear` or a regular expression");
        }
        Ok(Targets::Names(names))
    }

    /// A compiled matcher; a pattern that does not compile, or would be too large, is
    /// refused by name. (Rust's regular expressions run in linear time: no pattern
    /// backtracks.)
    fn matcher(&self) -> Result<Matcher<'_>> {
        Ok(match self {
            Targets::Names(names) => Matcher::Names(names),
            Targets::AllLinear => Matcher::AllLinear,
            Targets::Pattern(p) => {
                let full = format!("^(?:{p})$");
                let re = regex::RegexBuilder::new(&full)
                    .size_limit(1 << 20)
                    .nest_limit(64)
                    .build()
                    .map_err(|e| Error::Invalid(format!("the target pattern `{p}` is not a regular expression tchlab reads: {e}")))?;
                Matcher::Pattern(re)
            }
        })
    }

    /// How `adapter_config.json` writes them: a list, or a string for a pattern.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Targets::Names(n) => serde_json::json!(n),
            Targets::Pattern(p) => serde_json::json!(p),
            Targets::AllLinear => serde_json::json!("all-linear"),
        }
    }
}

impl std::fmt::Display for Targets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Targets::Names(n) => write!(f, "{}", n.join(",")),
            Targets::Pattern(p) => write!(f, "{p}"),
            Targets::AllLinear => write!(f, "all-linear"),
        }
    }
}

enum Matcher<'a> {
    Names(&'a [String]),
    Pattern(regex::Regex),
    AllLinear,
}

impl Matcher<'_> {
    fn matches(&self, layer: &LinearHandle, module: &str) -> bool {
        match self {
            Matcher::Names(names) => names.iter().any(|n| module == n || module.ends_with(&format!(".{n}"))),
            Matcher::Pattern(re) => re.is_match(module),
            Matcher::AllLinear => layer.role == Role::Inner,
        }
    }
}

/// An adapter's settings: what `%lora` takes and `adapter_config.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// The rank.
    pub r: i64,
    /// The scale's numerator: the update is multiplied by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// Which layers.
    pub targets: Targets,
    /// rsLoRA (Kalajdzievski 2023): scale by `alpha / √r`.
    pub rslora: bool,
    /// Per-layer ranks that replace `r` (peft's `rank_pattern`: a pattern → rank).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, i64>,
    /// Per-layer alphas (peft's `alpha_pattern`).
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Only the blocks of these numbers (peft's `layers_to_transform`).
    #[serde(default)]
    pub layers: Option<Vec<i64>>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: Targets::Names(vec!["q_proj".into(), "v_proj".into()]),
            rslora: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            layers: None,
        }
    }
}

impl LoraConfig {
    /// Checks every number; the message names the setting.
    pub fn validate(&self) -> Result<()> {
        let rank = |name: &str, r: i64| -> Result<()> {
            if !(1..=MAX_RANK).contains(&r) {
                return invalid!("{name} must be a whole number in 1..={MAX_RANK}, got {r}");
            }
            Ok(())
        };
        rank("r", self.r)?;
        let alpha = |name: &str, a: f64| -> Result<()> {
            if !(a.is_finite() && a > 0.0) {
                return invalid!("{name} must be a finite number above 0, got {a}");
            }
            Ok(())
        };
        alpha("alpha", self.alpha)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid!("dropout must be in [0, 1), got {}", self.dropout);
        }
        for (pattern, &r) in &self.rank_pattern {
            rank(&format!("the rank_pattern rank of `{pattern}`"), r)?;
        }
        for (pattern, &a) in &self.alpha_pattern {
            alpha(&format!("the alpha_pattern alpha of `{pattern}`"), a)?;
        }
        Ok(())
    }

    /// These settings with one changed from its text form, as `%set` and `%sweep` give
    /// it: `lora_r` (a rank, or 0 for no adapters: `None`), `lora_alpha`,
    /// `lora_dropout`. The message names the key.
    pub fn with_setting(&self, key: &str, value: &str) -> Result<Option<LoraConfig>> {
        let v = value.trim();
        let number = || v.parse::<f64>().or_else(|_| invalid!("{key}={v}: expected a number"));
        let mut config = self.clone();
        match key {
            "lora_r" => match v.parse::<i64>() {
                Ok(0) => return Ok(None),
                Ok(r) => config.r = r,
                Err(_) => return invalid!("{key}={v}: expected a whole number (0: no adapters)"),
            },
            "lora_alpha" => config.alpha = number()?,
            "lora_dropout" => config.dropout = number()?,
            _ => return invalid!("unknown LoRA setting `{key}`; they are {}", SETTINGS.join(", ")),
        }
        config.validate().map_err(|e| Error::Invalid(format!("{key}={v}: {e}")))?;
        Ok(Some(config))
    }

    /// The settings a peft `adapter_config.json` holds.
    pub fn from_peft(c: &PeftConfig) -> LoraConfig {
        LoraConfig {
            r: c.r,
            alpha: c.lora_alpha,
            dropout: c.lora_dropout,
            targets: match &c.target_modules {
                TargetModules::Names(n) => Targets::Names(n.clone()),
                TargetModules::Pattern(p) if p == "all-linear" => Targets::AllLinear,
                TargetModules::Pattern(p) => Targets::Pattern(p.clone()),
            },
            rslora: c.use_rslora,
            rank_pattern: c.rank_pattern.clone(),
            alpha_pattern: c.alpha_pattern.clone(),
            layers: c.layers_to_transform.clone(),
        }
    }

    /// The rank and scaling of the layer at `module`: the first pattern of
    /// `rank_pattern` / `alpha_pattern` that matches the end of its path (peft's
    /// `get_pattern_key`), else `r` and `alpha`.
    fn rank_and_scaling(&self, module: &str) -> Result<(i64, f64)> {
        let pick = |patterns: Vec<&String>| -> Result<Option<String>> {
            for p in patterns {
                let re = regex::RegexBuilder::new(&format!(r"^(?:.*\.)?(?:{p})$"))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| Error::Invalid(format!("the pattern `{p}` is not a regular expression tchlab reads: {e}")))?;
                if re.is_match(module) {
                    return Ok(Some(p.clone()));
                }
            }
            Ok(None)
        };
        let r = pick(self.rank_pattern.keys().collect())?.map_or(self.r, |k| self.rank_pattern[&k]);
        let alpha = pick(self.alpha_pattern.keys().collect())?.map_or(self.alpha, |k| self.alpha_pattern[&k]);
        let scaling = if self.rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
        Ok((r, scaling))
    }
}

/// The settings `%set`, `%fork` and `%sweep` take besides the hyperparameters.
pub const SETTINGS: &[&str] = &["lora_r", "lora_alpha", "lora_dropout"];

/// Whether `key` is one of [`SETTINGS`].
pub fn is_setting(key: &str) -> bool {
    SETTINGS.contains(&key)
}

/// The adapters a model carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapters {
    /// Their settings.
    pub config: LoraConfig,
    /// The adapted layers' module paths (as their weights are named, without `.weight`).
    pub layers: Vec<String>,
    /// Whether they are on.
    pub enabled: bool,
    /// The variables that were trainable before, frozen while adapters are on.
    frozen: Vec<String>,
}

/// One adapted layer, for listings.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AdaptedLayer {
    /// Its module path.
    pub layer: String,
    /// Its shape `(out, in)`.
    pub shape: [i64; 2],
    /// The adapter's rank.
    pub r: i64,
    /// `alpha / r` (or `alpha / √r`).
    pub scaling: f64,
    /// Trainable parameters: `r · (in + out)`.
    pub parameters: i64,
}

/// How the adapters' weights start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// peft's default: A Kaiming-uniform, B zero (the model is unchanged).
    Default,
}

impl Model {
    /// The adapters, if any.
    pub fn adapters(&self) -> Option<&Adapters> {
        self.adapters.as_ref()
    }

    /// Every linear layer the model was built with, by module path.
    pub fn linear_layers(&self) -> &[LinearHandle] {
        &self.linears
    }

    /// The path of layer `path` in the Hugging Face model (what peft's files and
    /// `target_modules` name), and whether its weight is stored transposed there
    /// (GPT-2's Conv1D: peft's `fan_in_fan_out`).
    pub fn hf_module(&self, path: &str) -> (String, bool) {
        let (key, transposed) = self.network.key_for_var(&format!("{path}.weight"));
        (key.strip_suffix(".weight").unwrap_or(&key).to_string(), transposed)
    }

    /// The layers `config` would adapt, in path order, matched against their Hugging
    /// Face paths as peft matches; none matched is an error that lists what there is.
    fn lora_targets(&self, config: &LoraConfig) -> Result<Vec<&LinearHandle>> {
        let chosen = self.layers_matching(&config.targets, config.layers.as_deref())?;
        if chosen.is_empty() {
            return invalid!(
                "targets={} matches no linear layer of this model; its layers are named {}, or use all-linear",
                config.targets,
                self.layer_kinds().join(", ")
            );
        }
        Ok(chosen)
    }

    /// The linear layers `targets` chooses (within the blocks `layers` lists), matched
    /// against their Hugging Face paths as peft matches them; perhaps none.
    pub(crate) fn layers_matching(&self, targets: &Targets, layers: Option<&[i64]>) -> Result<Vec<&LinearHandle>> {
        let matcher = targets.matcher()?;
        Ok(self
            .linears
            .iter()
            .filter(|l| {
                let module = self.hf_module(&l.path).0;
                matcher.matches(l, &module) && layers.is_none_or(|keep| block_number(&module).is_some_and(|n| keep.contains(&n)))
            })
            .collect())
    }

    /// The distinct last names of the model's linear layers (`c_attn`, `q_proj`, ...).
    pub(crate) fn layer_kinds(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.linears.iter().map(|l| l.path.rsplit('.').next().unwrap_or(&l.path)).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Adds adapters as `config` says, initialised as `init` says, and freezes
    /// everything else. Refused when the model has adapters already; nothing changes on
    /// any error.
    pub fn add_lora(&mut self, config: &LoraConfig, init: Init) -> Result<Vec<AdaptedLayer>> {
        let Init::Default = init;
        self.attach_lora(config, |layer, r| fresh_adapter(layer, r))
    }

    /// Adds adapters whose weights are given, by module path: `(A, B)` as peft stores
    /// them. Every layer `config` chooses must be given, with the shapes its rank and
    /// the layer's sizes make, and nothing else; nothing changes otherwise.
    pub fn load_lora(&mut self, config: &LoraConfig, mut weights: BTreeMap<String, (Tensor, Tensor)>) -> Result<Vec<AdaptedLayer>> {
        let chosen: Vec<String> = self.lora_targets(config)?.iter().map(|l| l.path.clone()).collect();
        if let Some(extra) = weights.keys().find(|k| !chosen.contains(k)) {
            return invalid!(
                "the adapter has weights for `{extra}`, which its target_modules ({}) do not choose in this model{}",
                config.targets,
                if self.linears.iter().any(|l| &l.path == extra) { "" } else { " (the model has no such layer: is it the adapter of another base?)" }
            );
        }
        self.attach_lora(config, |layer, r| {
            let Some((a, b)) = weights.remove(&layer.path) else {
                return invalid!("the adapter has no weights for `{}`, which its target_modules choose", layer.path);
            };
            let (want_a, want_b) = ([r, layer.in_features], [layer.out_features, r]);
            if a.size() != want_a || b.size() != want_b {
                return invalid!(
                    "the adapter's `{}` has lora_A {:?} and lora_B {:?}; this model's layer ({} → {}) with r = {r} needs {want_a:?} and {want_b:?}",
                    layer.path,
                    a.size(),
                    b.size(),
                    layer.in_features,
                    layer.out_features
                );
            }
            let finite = |t: &Tensor| -> Result<bool> { Ok(bool::try_from(t.f_isfinite()?.f_all()?)?) };
            if !finite(&a)? || !finite(&b)? {
                return Err(Error::NonFinite(format!("the adapter's weights for `{}` hold NaN or infinite values", layer.path)));
            }
            let device = layer.weight.device();
            Ok((a.f_to_kind(Kind::Float)?.f_to_device(device)?, b.f_to_kind(Kind::Float)?.f_to_device(device)?))
        })
    }

    fn attach_lora(&mut self, config: &LoraConfig, weights: impl FnMut(&LinearHandle, i64) -> Result<(Tensor, Tensor)>) -> Result<Vec<AdaptedLayer>> {
        if self.adapters.is_some() {
            return invalid!("the model has LoRA adapters already: `%lora merge` folds them into the weights, `%lora drop` removes them; then add new ones");
        }
        let prepared = self.prepare_lora(config, weights)?;
        Ok(self.install_lora(config, prepared))
    }

    /// Checks `config` against this model and makes every adapter's weights, changing
    /// nothing: what [`Model::install_lora`] then puts in place without failing.
    fn prepare_lora(&self, config: &LoraConfig, mut weights: impl FnMut(&LinearHandle, i64) -> Result<(Tensor, Tensor)>) -> Result<Vec<Prepared>> {
        config.validate()?;
        let chosen = self.lora_targets(config)?;
        let mut planned = Vec::with_capacity(chosen.len());
        let mut parameters = 0.0;
        for layer in &chosen {
            let (r, scaling) = config.rank_and_scaling(&layer.path)?;
            parameters += (r * (layer.in_features + layer.out_features)) as f64;
            planned.push((r, scaling));
        }
        crate::limits::ensure_fits(
            &format!("LoRA adapters of {parameters:.3e} parameters (with their gradients and the optimiser's moments)"),
            parameters * 16.0,
            self.device(),
            "choose a smaller r or fewer target layers",
        )?;
        chosen
            .iter()
            .zip(planned)
            .map(|(layer, (r, scaling))| {
                let (a, b) = weights(layer, r)?;
                Ok(Prepared { path: layer.path.clone(), a, b, r, scaling })
            })
            .collect()
    }

    /// Puts prepared adapters in place and freezes everything else.
    fn install_lora(&mut self, config: &LoraConfig, prepared: Vec<Prepared>) -> Vec<AdaptedLayer> {
        let frozen: Vec<String> = {
            let vars = self.vars.variables_.lock().unwrap_or_else(|p| p.into_inner());
            let mut names: Vec<String> = vars.named_variables.iter().filter(|(_, t)| t.requires_grad()).map(|(n, _)| n.clone()).collect();
            names.sort();
            for name in &names {
                let _ = vars.named_variables[name].shallow_clone().set_requires_grad(false);
            }
            names
        };
        let mut listed = Vec::with_capacity(prepared.len());
        for Prepared { path, a, b, r, scaling } in prepared {
            let layer = self.linears.iter().find(|l| l.path == path).expect("chosen from these");
            let a = self.add_variable(&format!("{path}.lora_A.weight"), a);
            let b = self.add_variable(&format!("{path}.lora_B.weight"), b);
            listed.push(AdaptedLayer {
                layer: path.clone(),
                shape: [layer.out_features, layer.in_features],
                r,
                scaling,
                parameters: r * (layer.in_features + layer.out_features),
            });
            layer.slot().lora = Some(LoraWeights { a, b, scaling, dropout: config.dropout, enabled: true });
        }
        self.adapters = Some(Adapters { config: config.clone(), layers: listed.iter().map(|l| l.layer.clone()).collect(), enabled: true, frozen });
        listed
    }

    /// Gives the model the adapters `config` describes — newly initialised, as `%lora`
    /// makes them — or none: the ones it has are replaced (or dropped) only once the new
    /// ones are made, so a refusal changes nothing. Nothing happens when they are the
    /// adapters it has.
    pub fn reshape_lora(&mut self, config: Option<&LoraConfig>) -> Result<()> {
        if self.adapters.as_ref().map(|a| &a.config) == config {
            return Ok(());
        }
        let Some(config) = config else {
            self.drop_lora()?;
            return Ok(());
        };
        let prepared = self.prepare_lora(config, |layer, r| fresh_adapter(layer, r))?;
        if self.adapters.is_some() {
            self.drop_lora()?;
        }
        self.install_lora(config, prepared);
        Ok(())
    }

    /// Changes the adapters' alpha and dropout in place (their weights stay).
    pub fn tune_lora(&mut self, alpha: f64, dropout: f64) -> Result<()> {
        let Some(adapters) = self.adapters.as_mut() else {
            return invalid!("the model has no LoRA adapters to tune; `%lora r=8` adds them");
        };
        let config = LoraConfig { alpha, dropout, ..adapters.config.clone() };
        config.validate()?;
        let mut scalings = Vec::with_capacity(self.linears.len());
        for l in &self.linears {
            scalings.push(config.rank_and_scaling(&l.path)?.1);
        }
        for (l, scaling) in self.linears.iter().zip(scalings) {
            if let Some(lora) = l.slot().lora.as_mut() {
                lora.scaling = scaling;
                lora.dropout = dropout;
            }
        }
        self.adapters.as_mut().expect("checked").config = config;
        Ok(())
    }

    /// The names of the variables the adapters `config` describes would have here.
    pub fn lora_variable_names(&self, config: &LoraConfig) -> Result<Vec<String>> {
        Ok(self.lora_targets(config)?.iter().flat_map(|l| [format!("{}.lora_A.weight", l.path), format!("{}.lora_B.weight", l.path)]).collect())
    }

    /// A trainable variable named `name` (dotted, as checkpoint keys) holding `value`.
    fn add_variable(&self, name: &str, value: Tensor) -> Tensor {
        let mut segments: Vec<&str> = name.split('.').collect();
        let last = segments.pop().expect("split gives one at least");
        let path = segments.iter().fold(self.vars.root(), |p, s| p.sub(*s));
        path.add(last, value, true)
    }

    /// The adapted layers as they stand, in the model's order (block 2 before block 10).
    pub fn lora_layers(&self) -> Vec<AdaptedLayer> {
        let mut layers: Vec<&LinearHandle> = self.linears.iter().collect();
        layers.sort_by_cached_key(|l| model_order(&l.path));
        layers
            .into_iter()
            .filter_map(|l| {
                let slot = l.slot();
                let lora = slot.lora.as_ref()?;
                let r = lora.a.size()[0];
                Some(AdaptedLayer {
                    layer: l.path.clone(),
                    shape: [l.out_features, l.in_features],
                    r,
                    scaling: lora.scaling,
                    parameters: r * (l.in_features + l.out_features),
                })
            })
            .collect()
    }

    /// Switches the adapters on or off (`%lora on|off`), keeping them.
    pub fn set_lora_enabled(&mut self, enabled: bool) -> Result<()> {
        let Some(adapters) = self.adapters.as_mut() else {
            return invalid!("the model has no LoRA adapters to switch; `%lora r=8` adds them");
        };
        adapters.enabled = enabled;
        for l in &self.linears {
            if let Some(lora) = l.slot().lora.as_mut() {
                lora.enabled = enabled;
            }
        }
        Ok(())
    }

    /// Removes the adapters and unfreezes what they froze: the model is as it was before
    /// `%lora`, bit for bit.
    pub fn drop_lora(&mut self) -> Result<Adapters> {
        let Some(adapters) = self.adapters.take() else {
            return invalid!("the model has no LoRA adapters to drop");
        };
        let mut vars = self.vars.variables_.lock().unwrap_or_else(|p| p.into_inner());
        for l in &self.linears {
            if l.slot().lora.take().is_some() {
                for part in ["lora_A", "lora_B"] {
                    if let Some(t) = vars.named_variables.remove(&format!("{}.{part}.weight", l.path)) {
                        let ptr = t.data_ptr();
                        vars.trainable_variables.retain(|v| v.tensor.data_ptr() != ptr);
                    }
                }
            }
        }
        for name in &adapters.frozen {
            if let Some(t) = vars.named_variables.get(name) {
                let _ = t.shallow_clone().set_requires_grad(true);
            }
        }
        Ok(adapters)
    }

    /// Folds each adapter into its layer's weight (`W += scaling · B A`, computed in
    /// float32), as peft's `merge_and_unload` does, then drops the adapters. In a pruned
    /// layer only the weights its mask keeps take the adapter's change.
    pub fn merge_lora(&mut self) -> Result<Adapters> {
        if self.adapters.is_none() {
            return invalid!("the model has no LoRA adapters to merge; `%lora r=8` adds them");
        }
        if let Some(format) = self.quantized() {
            return invalid!(
                "the model computes with {format} weights: merging into them would quantise twice. `%quantize none`, then `%lora merge`, then quantise again (as peft advises for QLoRA adapters)"
            );
        }
        let mut merged = Vec::new();
        for l in &self.linears {
            let slot = l.slot();
            if let Some(lora) = slot.lora.as_ref() {
                let mut delta = lora.delta()?.f_to_kind(l.weight.kind())?;
                // A pruned layer stays pruned: the adapters fill only the weights it kept.
                if let Some(mask) = &slot.mask {
                    delta = delta.f_mul(&mask.f_to_kind(delta.kind())?)?;
                }
                merged.push((l.weight.shallow_clone(), delta));
            }
        }
        tch::no_grad(|| -> Result<()> {
            for (w, delta) in &merged {
                let _ = w.shallow_clone().f_add_(delta)?;
            }
            Ok(())
        })?;
        self.base_changed();
        self.drop_lora()
    }

    /// Adds the adapter peft saved (read by `checkpoint::peft::read`), its module paths those of
    /// this model's Hugging Face class; refused, changing nothing, when it does not fit.
    pub fn load_peft(&mut self, adapter: Adapter) -> Result<Vec<AdaptedLayer>> {
        let config = LoraConfig::from_peft(&adapter.config);
        self.load_peft_as(&config, adapter)
    }

    /// [`Model::load_peft`] with the settings `config` rather than the file's (a
    /// training checkpoint keeps tchlab's own, `all-linear` included).
    pub fn load_peft_as(&mut self, config: &LoraConfig, adapter: Adapter) -> Result<Vec<AdaptedLayer>> {
        let mut weights = BTreeMap::new();
        for (module, pair) in adapter.weights {
            let path = match self.network.var_for_key(&format!("{module}.weight")) {
                Some((var, _)) => var.strip_suffix(".weight").unwrap_or(&var).to_string(),
                None => module,
            };
            weights.insert(path, pair);
        }
        self.load_lora(config, weights)
    }

    /// The adapters as peft saves them: settings (with `base` as
    /// `base_model_name_or_path`) and weights by Hugging Face module path.
    pub fn peft_adapter(&self, base: Option<String>, task_type: &str) -> Result<(PeftConfig, BTreeMap<String, (Tensor, Tensor)>)> {
        let Some(adapters) = &self.adapters else {
            return invalid!("the model has no LoRA adapters to save; `%lora r=8` adds them");
        };
        let c = &adapters.config;
        let mut fan_in_fan_out = false;
        let mut weights = BTreeMap::new();
        for (path, (a, b)) in self.lora_weights() {
            let (module, transposed) = self.hf_module(&path);
            fan_in_fan_out |= transposed;
            weights.insert(module, (a, b));
        }
        let target_modules = match &c.targets {
            Targets::Names(n) => TargetModules::Names(n.clone()),
            Targets::Pattern(p) => TargetModules::Pattern(p.clone()),
            // As peft ≥ 0.15 saves `all-linear`: the modules it chose, by full path.
            Targets::AllLinear => TargetModules::Names(weights.keys().cloned().collect()),
        };
        let config = PeftConfig {
            r: c.r,
            lora_alpha: c.alpha,
            lora_dropout: c.dropout,
            target_modules,
            use_rslora: c.rslora,
            rank_pattern: c.rank_pattern.clone(),
            alpha_pattern: c.alpha_pattern.clone(),
            layers_to_transform: c.layers.clone(),
            fan_in_fan_out,
            base_model_name_or_path: base,
            task_type: Some(task_type.to_string()),
        };
        Ok((config, weights))
    }

    /// Whether `name` is one of the adapters' variables (not a weight of the base).
    pub fn is_adapter_variable(name: &str) -> bool {
        name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight")
    }

    /// The adapters' weights by module path, as `(A, B)`.
    pub fn lora_weights(&self) -> BTreeMap<String, (Tensor, Tensor)> {
        self.linears
            .iter()
            .filter_map(|l| {
                let slot = l.slot();
                let lora = slot.lora.as_ref()?;
                Some((l.path.clone(), (lora.a.shallow_clone(), lora.b.shallow_clone())))
            })
            .collect()
    }
}

/// An adapter as peft's default initialises it: A Kaiming-uniform with a = √5 (uniform
/// in ±1/√in), B zero.
fn fresh_adapter(layer: &LinearHandle, r: i64) -> Result<(Tensor, Tensor)> {
    let bound = 1.0 / (layer.in_features as f64).sqrt();
    let a = Tensor::f_empty([r, layer.in_features], (Kind::Float, layer.weight.device()))?.f_uniform_(-bound, bound)?;
    let b = Tensor::f_zeros([layer.out_features, r], (Kind::Float, layer.weight.device()))?;
    Ok((a, b))
}

/// One adapter made and checked, not yet in its layer.
struct Prepared {
    path: String,
    a: Tensor,
    b: Tensor,
    r: i64,
    scaling: f64,
}

/// A module path's sort key with its numbers as numbers: `layers.2` before `layers.10`.
fn model_order(path: &str) -> Vec<(u64, String)> {
    path.split('.').map(|part| part.parse::<u64>().map_or((u64::MAX, part.to_string()), |n| (n, String::new()))).collect()
}

/// The first number in a module path (`model.layers.3.mlp.up_proj` → 3): the block,
/// as peft's `layers_to_transform` reads it.
fn block_number(path: &str) -> Option<i64> {
    path.split('.').find_map(|part| part.parse::<i64>().ok())
}
