//! Bad input is an error that names the file and the problem, never a panic, and a
//! failed load leaves the model as it was.

mod common;

use common::{fixtures, scratch};
use tch::Device;
use tchlab::checkpoint::{self, load_weights};
use tchlab::tokenize::Tokenizer;
use tchlab::Error;

fn error_text(result: tchlab::Result<impl Sized>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_path_names_it() {
    let err = error_text(checkpoint::load("/nonexistent/model-dir", Device::Cpu));
    assert!(err.contains("/nonexistent/model-dir") && err.contains("No such file"), "{err}");
}

#[test]
fn directory_without_weights_says_what_it_expected() {
    let dir = scratch("no-weights");
    std::fs::copy(fixtures().join("gpt-a/config.json"), dir.join("config.json")).unwrap();
    let err = error_text(checkpoint::load(&dir, Device::Cpu));
    assert!(err.contains(&dir.display().to_string()) && err.contains("model.safetensors"), "{err}");
}

#[test]
fn directory_without_config_says_so() {
    let dir = scratch("no-config");
    std::fs::copy(fixtures().join("gpt-a/model.safetensors"), dir.join("model.safetensors")).unwrap();
    let err = error_text(checkpoint::load(&dir, Device::Cpu));
    assert!(err.contains("no config.json"), "{err}");
}

#[test]
fn truncated_safetensors_is_reported_as_corrupt() {
    let dir = scratch("truncated");
    std::fs::copy(fixtures().join("gpt-a/config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(fixtures().join("gpt-a/model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = error_text(checkpoint::load(&dir, Device::Cpu));
    assert!(err.contains("model.safetensors") && err.contains("truncated or corrupt"), "{err}");
    std::fs::write(dir.join("model.safetensors"), &bytes[..5]).unwrap();
    let err = error_text(checkpoint::load(&dir, Device::Cpu));
    assert!(err.contains("truncated or corrupt"), "{err}");
}

#[test]
fn unknown_model_type_lists_the_known_ones() {
    let dir = scratch("mamba");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "mamba", "d_model": 8}"#).unwrap();
    std::fs::copy(fixtures().join("gpt-a/model.safetensors"), dir.join("model.safetensors")).unwrap();
    let err = error_text(checkpoint::load(&dir, Device::Cpu));
    assert!(err.contains("config.json") && err.contains("\"mamba\"") && err.contains("gpt2") && err.contains("qwen3") && err.contains("t5"), "{err}");
}

#[test]
fn an_incomplete_llama_config_names_the_missing_key() {
    let dir = scratch("llama");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "llama", "hidden_size": 8}"#).unwrap();
    std::fs::copy(fixtures().join("gpt-a/model.safetensors"), dir.join("model.safetensors")).unwrap();
    let err = error_text(checkpoint::load(&dir, Device::Cpu));
    assert!(err.contains("config.json") && err.contains("missing field `vocab_size`"), "{err}");
}

#[test]
fn llama_configs_that_do_not_fit_together_are_refused_by_key() {
    let dir = scratch("llama-bad");
    let cases = [
        (r#""num_attention_heads": 4, "num_key_value_heads": 3"#, "num_key_value_heads"),
        (r#""num_attention_heads": 4, "head_dim": 7"#, "head_dim"),
        (r#""num_attention_heads": 4, "rope_scaling": {"rope_type": "yarn", "factor": 4}"#, "yarn"),
        (r#""num_attention_heads": 4, "rope_scaling": {"rope_type": "llama3", "factor": 8}"#, "low_freq_factor"),
        (r#""num_attention_heads": 4, "rms_norm_eps": 0"#, "rms_norm_eps"),
    ];
    for (extra, key) in cases {
        let config = format!(r#"{{"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, {extra}}}"#);
        std::fs::write(dir.join("config.json"), config).unwrap();
        std::fs::copy(fixtures().join("gpt-a/model.safetensors"), dir.join("model.safetensors")).unwrap();
        let err = error_text(checkpoint::load(&dir, Device::Cpu));
        assert!(err.contains("config.json") && err.contains(key), "{extra}: {err}");
    }
}

#[test]
fn inconsistent_config_names_the_keys() {
    let dir = scratch("bad-heads");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("gpt-a/config.json")).unwrap()).unwrap();
    config["n_head"] = 5.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let err = error_text(checkpoint::load(&dir, Device::Cpu));
    assert!(err.contains("config.json") && err.contains("n_embd") && err.contains("n_head"), "{err}");
}

#[test]
fn unparsable_tokenizer_json_names_the_file() {
    let dir = scratch("bad-tokenizer");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("gpt-a").join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": 17").unwrap();
    let err = error_text(checkpoint::load(&dir, Device::Cpu));
    assert!(err.contains("tokenizer.json") && err.contains("tokenizers library"), "{err}");
    let err = error_text(Tokenizer::from_file(dir.join("tokenizer.json")));
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn weights_of_another_architecture_are_refused_and_change_nothing() {
    let gpt = checkpoint::load(fixtures().join("gpt-a"), Device::Cpu).unwrap().model;
    let before = checkpoint::hf_state_dict(&gpt).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("minilm.json")).unwrap()).unwrap();
    let bert_weights = std::path::Path::new(json["model_dir"].as_str().unwrap()).join("model.safetensors");
    let err = error_text(load_weights(&gpt, &bert_weights, true));
    assert!(err.contains("model.safetensors") && err.contains("another architecture"), "{err}");
    assert_unchanged(&gpt, &before);
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_shapes_and_changes_nothing() {
    let gpt = checkpoint::load(fixtures().join("gpt-a"), Device::Cpu).unwrap().model;
    let before = checkpoint::hf_state_dict(&gpt).unwrap();
    let err = load_weights(&gpt, fixtures().join("gpt-b/model.safetensors"), true).err().expect("gpt-b's weights do not fit gpt-a");
    match &err {
        Error::ShapeMismatch { name, expected, found, .. } => assert!(!name.is_empty() && expected != found),
        other => panic!("expected a shape mismatch, got {other}"),
    }
    let text = err.to_string();
    assert!(text.contains("gpt-b/model.safetensors") && text.contains("has shape") && text.contains("expects"), "{text}");
    assert_unchanged(&gpt, &before);
}

#[test]
fn pickle_that_runs_a_command_is_refused_without_running_it() {
    let evil = fixtures().join("evil.pt");
    let err = error_text(checkpoint::read_file(&evil));
    assert!(err.contains("evil.pt") && err.contains("`posix.system`"), "{err}");
    assert!(!fixtures().join("evil-ran").exists(), "the pickle's command ran");
}

#[test]
fn unknown_extension_lists_the_formats() {
    let err = error_text(checkpoint::read_file(std::path::Path::new("weights.h5")));
    assert!(err.contains("weights.h5") && err.contains(".safetensors"), "{err}");
}

#[test]
fn ot_files_are_refused_with_how_to_convert_them() {
    // libtorch reads .ot files with its TorchScript loader, which can run code from the file.
    let dir = scratch("ot");
    let t = tch::Tensor::arange(6, (tch::Kind::Float, Device::Cpu)).view([2, 3]);
    tch::Tensor::save_multi(&[("w", &t)], dir.join("w.ot")).unwrap();
    let err = error_text(checkpoint::read_file(&dir.join("w.ot")));
    assert!(err.contains("w.ot") && err.contains("TorchScript") && err.contains("write_safetensors"), "{err}");
}

fn assert_unchanged(model: &tchlab::models::Model, before: &[(String, tch::Tensor)]) {
    for ((name, now), (_, then)) in checkpoint::hf_state_dict(model).unwrap().iter().zip(before) {
        assert_eq!(common::max_abs_diff(now, then), 0.0, "{name} changed after a failed load");
    }
}
