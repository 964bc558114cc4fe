//! peft's LoRA adapter directories, read and written as `PeftModel.save_pretrained`
//! writes them (<https://github.com/huggingface/peft/blob/5d602fdb/src/peft/peft_model.py>,
//! `save_pretrained`; `utils/save_and_load.py`):
//!
//! ```text
//! DIR/adapter_config.json        peft_type LORA, r, lora_alpha, target_modules, ...
//! DIR/adapter_model.safetensors  base_model.model.<module>.lora_A.weight (r, in)
//!                                base_model.model.<module>.lora_B.weight (out, r)
//! ```
//!
//! Only the file format lives here: module paths are the Hugging Face model's, and
//! which layers of a model they name is the model's business ([`crate::models::lora`]).
//! A reader of files others made: every setting is checked before any tensor is read,
//! settings that change what the adapter computes and that tchlab does not do (DoRA,
//! trained biases, full copies of modules, other kinds of adapter) are refused by name,
//! and every tensor must be an A or a B of some module.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::models::lora::{Adapter, PeftConfig, TargetModules, MAX_RANK};

/// The configuration file.
pub const CONFIG: &str = "adapter_config.json";
/// The weights file.
pub const WEIGHTS: &str = "adapter_model.safetensors";
/// The prefix peft's wrapper puts before the model's own module paths.
const PREFIX: &str = "base_model.model.";
/// Whether `dir` holds an adapter (its configuration file).
pub fn is_adapter(dir: &Path) -> bool {
    dir.join(CONFIG).is_file()
}

/// Reads `dir/adapter_config.json` and its weights (`adapter_model.safetensors`, or
/// peft's older `adapter_model.bin`).
pub fn read(dir: &Path) -> Result<Adapter> {
    let config_path = dir.join(CONFIG);
    let text = crate::limits::read_text(&config_path, 1 << 20)?;
    let json: Value = serde_json::from_str(&text).map_err(|e| Error::format(&config_path, format!("not valid JSON: {e}")))?;
    let config = parse_config(&json).map_err(|message| Error::format(&config_path, message))?;
    let weights_path = [WEIGHTS, "adapter_model.bin"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::format(dir, format!("an adapter directory holds {CONFIG} and {WEIGHTS} (or adapter_model.bin); there are no weights")))?;
    let tensors = super::read_file(&weights_path)?;
    let weights = pair_up(tensors).map_err(|message| Error::format(&weights_path, message))?;
    Ok(Adapter { config, weights })
}

/// The settings in `json`; the message names the key that is wrong.
fn parse_config(json: &Value) -> std::result::Result<PeftConfig, String> {
    let field = |k: &str| json.get(k).filter(|v| !v.is_null());
    match field("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        Some(other) => return Err(format!("peft_type is {other:?}: tchlab reads LoRA adapters (peft_type \"LORA\") only")),
        None => return Err("no peft_type: peft writes \"peft_type\": \"LORA\" for a LoRA adapter".into()),
    }
    let flag = |k: &str| field(k).map_or(Ok(false), |v| v.as_bool().ok_or_else(|| format!("{k} must be true or false, got {v}")));
    for (key, what) in [("use_dora", "DoRA (weight-decomposed LoRA)"), ("lora_bias", "a bias on lora_B"), ("use_qalora", "QA-LoRA")] {
        if flag(key)? {
            return Err(format!("{key} is true: tchlab does not compute {what}; only plain LoRA adapters load"));
        }
    }
    if let Some(bias) = field("bias").and_then(Value::as_str).filter(|b| *b != "none") {
        return Err(format!("bias is {bias:?}: the adapter trained the base model's biases, which tchlab does not load; only bias \"none\" is read"));
    }
    if field("modules_to_save").and_then(Value::as_array).is_some_and(|m| !m.is_empty()) {
        return Err("modules_to_save is not empty: the adapter carries full copies of modules, which tchlab does not load".into());
    }
    let whole = |k: &str, default: i64| -> std::result::Result<i64, String> {
        match field(k) {
            None => Ok(default),
            Some(v) => v.as_i64().ok_or_else(|| format!("{k} must be a whole number, got {v}")),
        }
    };
    let number = |k: &str, default: f64| -> std::result::Result<f64, String> {
        match field(k) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| format!("{k} must be a number, got {v}")),
        }
    };
    let r = whole("r", 8)?;
    if !(1..=MAX_RANK).contains(&r) {
        return Err(format!("r is {r}; an adapter's rank must be in 1..={MAX_RANK}"));
    }
    let lora_alpha = number("lora_alpha", 8.0)?;
    if !(lora_alpha.is_finite() && lora_alpha > 0.0) {
        return Err(format!("lora_alpha is {lora_alpha}; it must be a finite number above 0"));
    }
    let lora_dropout = number("lora_dropout", 0.0)?;
    if !(0.0..1.0).contains(&lora_dropout) {
        return Err(format!("lora_dropout is {lora_dropout}; it must be in [0, 1)"));
    }
    let strings = |v: &Value| -> Option<Vec<String>> { v.as_array()?.iter().map(|s| s.as_str().map(str::to_string)).collect() };
    let target_modules = match field("target_modules") {
        Some(Value::String(s)) => TargetModules::Pattern(s.clone()),
        Some(v) => {
            TargetModules::Names(strings(v).filter(|n| !n.is_empty()).ok_or_else(|| format!("target_modules must be a list of names or a string, got {v}"))?)
        }
        None => return Err("no target_modules: tchlab needs to be told which modules the adapter is on".into()),
    };
    let patterns = |k: &str| -> std::result::Result<BTreeMap<String, f64>, String> {
        match field(k) {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(m)) => {
                m.iter().map(|(p, v)| v.as_f64().map(|x| (p.clone(), x)).ok_or_else(|| format!("{k}[{p:?}] must be a number, got {v}"))).collect()
            }
            Some(v) => Err(format!("{k} must be an object of pattern → number, got {v}")),
        }
    };
    let rank_pattern = patterns("rank_pattern")?
        .into_iter()
        .map(|(p, x)| {
            if x.fract() == 0.0 && (1.0..=MAX_RANK as f64).contains(&x) {
                Ok((p, x as i64))
            } else {
                Err(format!("rank_pattern[{p:?}] is {x}; a rank is a whole number in 1..={MAX_RANK}"))
            }
        })
        .collect::<std::result::Result<_, _>>()?;
    let layers_to_transform = match field("layers_to_transform") {
        None => None,
        Some(v) if v.is_i64() => Some(vec![v.as_i64().expect("checked")]),
        Some(v) => Some(
            v.as_array()
                .and_then(|a| a.iter().map(Value::as_i64).collect())
                .ok_or_else(|| format!("layers_to_transform must be a number or a list of numbers, got {v}"))?,
        ),
    };
    Ok(PeftConfig {
        r,
        lora_alpha,
        lora_dropout,
        target_modules,
        use_rslora: flag("use_rslora")?,
        rank_pattern,
        alpha_pattern: patterns("alpha_pattern")?,
        layers_to_transform,
        fan_in_fan_out: flag("fan_in_fan_out")?,
        base_model_name_or_path: field("base_model_name_or_path").and_then(Value::as_str).map(str::to_string),
        task_type: field("task_type").and_then(Value::as_str).map(str::to_string),
    })
}

/// Each module's `(A, B)` from the file's tensors; any other tensor is refused by name.
fn pair_up(tensors: Vec<(String, Tensor)>) -> std::result::Result<BTreeMap<String, (Tensor, Tensor)>, String> {
    let mut halves: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (key, tensor) in tensors {
        let path = key.strip_prefix(PREFIX).unwrap_or(&key);
        let (module, is_a) = match (path.strip_suffix(".lora_A.weight"), path.strip_suffix(".lora_B.weight")) {
            (Some(m), _) => (m, true),
            (_, Some(m)) => (m, false),
            _ => return Err(format!("`{key}` is not a LoRA weight (`<module>.lora_A.weight` or `.lora_B.weight`); tchlab reads plain LoRA adapters only")),
        };
        if tensor.dim() != 2 || !tensor.is_floating_point() {
            return Err(format!("`{key}` must be a 2-D floating-point matrix, it is {:?} {:?}", tensor.kind(), tensor.size()));
        }
        let entry = halves.entry(module.to_string()).or_default();
        let slot = if is_a { &mut entry.0 } else { &mut entry.1 };
        if slot.replace(tensor).is_some() {
            return Err(format!("`{key}` is there twice"));
        }
    }
    if halves.is_empty() {
        return Err("it holds no LoRA weights".into());
    }
    halves
        .into_iter()
        .map(|(module, pair)| match pair {
            (Some(a), Some(b)) => Ok((module, (a, b))),
            (None, _) => Err(format!("`{module}` has lora_B but no lora_A")),
            (_, None) => Err(format!("`{module}` has lora_A but no lora_B")),
        })
        .collect()
}

/// Writes an adapter into `dir` as peft does: `adapter_config.json` (sorted keys, the
/// settings every peft since 0.9 reads) and `adapter_model.safetensors`. The directory
/// must be new, empty, or one tchlab wrote.
pub fn write(dir: &Path, config: &PeftConfig, weights: &BTreeMap<String, (Tensor, Tensor)>) -> Result<()> {
    super::check_save_target(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let targets = match &config.target_modules {
        TargetModules::Names(n) => json!(n),
        TargetModules::Pattern(p) => json!(p),
    };
    let json = json!({
        "alpha_pattern": config.alpha_pattern,
        "base_model_name_or_path": config.base_model_name_or_path,
        "bias": "none",
        "fan_in_fan_out": config.fan_in_fan_out,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": config.layers_to_transform,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": config.r,
        "rank_pattern": config.rank_pattern,
        "revision": null,
        "target_modules": targets,
        "task_type": config.task_type,
        "use_dora": false,
        "use_rslora": config.use_rslora,
    });
    let text = serde_json::to_string_pretty(&json).expect("JSON");
    crate::atomic::write(&dir.join(CONFIG), |w| w.write_all(text.as_bytes()))?;
    let mut tensors = Vec::with_capacity(2 * weights.len());
    for (module, (a, b)) in weights {
        tensors.push((format!("{PREFIX}{module}.lora_A.weight"), a.f_detach()?.f_contiguous()?));
        tensors.push((format!("{PREFIX}{module}.lora_B.weight"), b.f_detach()?.f_contiguous()?));
    }
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    super::safetensors::write(&dir.join(WEIGHTS), &tensors, &metadata)?;
    super::mark(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: Value) -> std::result::Result<PeftConfig, String> {
        let mut json = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]});
        for (k, v) in extra.as_object().unwrap() {
            json[k] = v.clone();
        }
        parse_config(&json)
    }

    #[test]
    fn settings_are_read_in_peft_names_and_what_changes_the_computation_is_refused() {
        let c = config(json!({"use_rslora": true, "rank_pattern": {"q_proj": 2}, "unknown_key_of_a_newer_peft": 1})).unwrap();
        assert_eq!((c.r, c.lora_alpha, c.use_rslora, c.rank_pattern["q_proj"]), (4, 8.0, true, 2));
        assert_eq!(config(json!({"target_modules": ".*\\.q_proj"})).unwrap().target_modules, TargetModules::Pattern(".*\\.q_proj".into()));
        for (bad, says) in [
            (json!({"peft_type": "IA3"}), "\"IA3\""),
            (json!({"peft_type": "PROMPT_TUNING"}), "LoRA adapters"),
            (json!({"r": 1_000_000_000}), "r is 1000000000"),
            (json!({"r": 0}), "1..="),
            (json!({"r": 2.5}), "whole number"),
            (json!({"lora_alpha": -1}), "above 0"),
            (json!({"lora_dropout": 1.0}), "[0, 1)"),
            (json!({"use_dora": true}), "DoRA"),
            (json!({"bias": "all"}), "biases"),
            (json!({"modules_to_save": ["lm_head"]}), "full copies"),
            (json!({"target_modules": null}), "no target_modules"),
            (json!({"target_modules": [1, 2]}), "list of names"),
            (json!({"rank_pattern": {"q": 0.5}}), "whole number"),
        ] {
            let e = config(bad.clone()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn tensors_pair_up_by_module_and_strangers_are_refused() {
        let t = |n: &str| (n.to_string(), Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu)));
        let pairs = pair_up(vec![t("base_model.model.a.q.lora_A.weight"), t("base_model.model.a.q.lora_B.weight")]).unwrap();
        assert_eq!(pairs.keys().collect::<Vec<_>>(), ["a.q"]);
        assert!(pair_up(vec![t("base_model.model.a.q.lora_A.weight")]).unwrap_err().contains("no lora_B"));
        assert!(pair_up(vec![t("base_model.model.a.q.lora_magnitude_vector")]).unwrap_err().contains("not a LoRA weight"));
        assert!(pair_up(vec![]).unwrap_err().contains("no LoRA weights"));
    }
}
