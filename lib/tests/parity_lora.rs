//! LoRA against peft: adapters peft made (with `init_lora_weights=False`, so that they
//! change the output) on a tiny Llama with grouped-query attention and a tied head, on
//! the same with `all-linear`, rsLoRA and per-module ranks, and on GPT-2's Conv1D layers.
//! Logits with the adapter loaded, switched off and merged; the gradient of every A and
//! B after one backward pass; two AdamW steps of the adapters alone; the frozen base
//! untouched; and adapters written here read back by peft with the same logits.

mod common;

use std::collections::BTreeMap;

use common::{fixture_tensor, fixtures};
use tch::{Device, Tensor};
use tchlab::checkpoint;
use tchlab::checkpoint::peft;
use tchlab::models::lora::{Init, LoraConfig, Targets};
use tchlab::models::{ForwardOptions, Model};
use tchlab::train::optim::{Method, Optimizer};

const CASES: &[&str] = &["lora-llama", "lora-llama-all", "lora-gpt"];

/// `|a − b| ≤ rel · max |b|`, elementwise.
fn assert_relative(a: &Tensor, b: &Tensor, rel: f64, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: shapes differ");
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    let diff = common::max_abs_diff(a, b);
    assert!(diff <= rel * scale, "{what}: max |difference| {diff:e} is more than {rel:e} of the largest value {scale:e}");
}

fn adapted(case: &str) -> Model {
    let mut model = checkpoint::load(fixtures().join(case).join("base"), Device::Cpu).unwrap().model;
    let layers = model.load_peft(peft::read(&fixtures().join(case).join("adapter")).unwrap()).unwrap();
    assert!(!layers.is_empty());
    model
}

fn logits(model: &Model, ids: &Tensor) -> Tensor {
    tch::no_grad(|| model.forward(ids, None, &ForwardOptions::default(), None).unwrap().logits.unwrap())
}

fn expected(case: &str, name: &str) -> Tensor {
    fixture_tensor(&fixtures().join(case).join("expected.safetensors"), name)
}

#[test]
fn logits_with_the_adapter_off_and_merged_equal_peft() {
    for case in CASES {
        let mut model = adapted(case);
        let ids = expected(case, "input_ids");
        assert_relative(&logits(&model, &ids), &expected(case, "logits_lora"), 1e-4, &format!("{case}: logits with the adapter"));
        model.set_lora_enabled(false).unwrap();
        assert_relative(&logits(&model, &ids), &expected(case, "logits_base"), 1e-4, &format!("{case}: logits with the adapter off"));
        model.set_lora_enabled(true).unwrap();
        model.merge_lora().unwrap();
        assert!(model.adapters().is_none() && model.vars.variables().keys().all(|k| !k.contains("lora_")));
        assert_relative(&logits(&model, &ids), &expected(case, "logits_merged"), 1e-4, &format!("{case}: logits merged"));
        let merged = checkpoint::read_file(&fixtures().join(case).join("merged").join("model.safetensors")).unwrap();
        let ours: BTreeMap<String, Tensor> = checkpoint::hf_state_dict(&model).unwrap().into_iter().collect();
        for (key, theirs) in merged {
            if let Some(mine) = ours.get(&key) {
                assert_relative(mine, &theirs, 1e-5, &format!("{case}: merged weight {key}"));
            }
        }
    }
}

#[test]
fn gradients_and_two_adamw_steps_of_the_adapters_equal_pytorch() {
    for case in CASES {
        let model = adapted(case);
        let base_before = model.checksum_of(|name| !Model::is_adapter_variable(name)).unwrap();
        let mut opt = Optimizer::new(&model.vars, Method::adamw(), 1e-2, 0.0).unwrap();
        assert!(opt.params.iter().all(|p| Model::is_adapter_variable(&p.name)), "{case}: the optimiser holds the adapters alone");
        assert_eq!(opt.params.len(), 2 * model.lora_layers().len());
        let (ids, labels) = (expected(case, "input_ids"), expected(case, "labels"));
        let targets = labels.narrow(1, 1, labels.size()[1] - 1);
        for step in 1..=2 {
            opt.zero_grad();
            let out = model.forward(&ids, None, &ForwardOptions { train: true, ..Default::default() }, None).unwrap().logits.unwrap();
            let out = out.narrow(1, 0, out.size()[1] - 1);
            let loss = tchlab::train::lm_loss(&out, &targets);
            let reference = expected(case, &format!("loss_step{step}")).double_value(&[0]);
            assert!((loss.double_value(&[]) - reference).abs() <= 1e-5 * reference.abs(), "{case}: loss at step {step}");
            loss.backward();
            for p in &opt.params {
                if step == 1 {
                    assert_relative(&p.var.grad(), &expected(case, &format!("grad_step1.{}", p.name)), 1e-5, &format!("{case}: gradient of {}", p.name));
                }
            }
            opt.step().unwrap();
            for p in &opt.params {
                assert_relative(
                    &p.var.detach(),
                    &expected(case, &format!("param_after{step}.{}", p.name)),
                    1e-5,
                    &format!("{case}: {} after step {step}", p.name),
                );
            }
        }
        assert_eq!(model.checksum_of(|name| !Model::is_adapter_variable(name)).unwrap(), base_before, "{case}: the frozen base is bit for bit the same");
    }
}

#[test]
fn a_new_adapter_changes_nothing_until_it_trains_and_dropping_it_restores_the_model() {
    let mut model = checkpoint::load(fixtures().join("lora-llama").join("base"), Device::Cpu).unwrap().model;
    let ids = expected("lora-llama", "input_ids");
    let (before, checksum) = (logits(&model, &ids), model.checksum().unwrap());
    tch::manual_seed(0);
    let config = LoraConfig { r: 8, targets: Targets::AllLinear, ..Default::default() };
    let layers = model.add_lora(&config, Init::Default).unwrap();
    assert_eq!(layers.len(), 2 * 7, "all-linear: seven projections in each of two blocks, and no head (it is tied)");
    assert!(logits(&model, &ids).equal(&before), "B starts at zero: the logits are exactly the base's");
    for (path, (a, b)) in model.lora_weights() {
        let bound = 1.0 / (a.size()[1] as f64).sqrt();
        assert!(a.abs().max().double_value(&[]) <= bound, "{path}: A within ±1/√in");
        assert!(a.std(true).double_value(&[]) > 0.5 * bound / 3f64.sqrt(), "{path}: A spread across its range");
        assert_eq!(b.abs().max().double_value(&[]), 0.0, "{path}: B is zero");
    }
    assert_eq!(model.num_trainable(), 8 * layers.iter().map(|l| l.shape[0] + l.shape[1]).sum::<i64>());
    let e = model.add_lora(&config, Init::Default).unwrap_err().to_string();
    assert!(e.contains("adapters already") && e.contains("%lora drop"), "{e}");
    model.drop_lora().unwrap();
    assert_eq!(model.checksum().unwrap(), checksum, "dropping the adapters leaves the model as it was");
    assert!(model.vars.trainable_variables().iter().all(|t| t.requires_grad()), "and unfreezes the base");
}

#[test]
fn an_adapter_saved_here_loads_in_peft_with_the_same_logits() {
    let dir = common::scratch("lora-roundtrip");
    for case in ["lora-llama-all", "lora-gpt"] {
        let model = adapted(case);
        let (config, weights) = model.peft_adapter(Some("tiny".into()), "CAUSAL_LM").unwrap();
        let out = dir.join(case);
        peft::write(&out, &config, &weights).unwrap();
        let ids = expected(case, "input_ids");
        let ours = logits(&model, &ids);
        tchlab::formats::safetensors::write(&out.join("expected.safetensors"), &[("ids".into(), ids), ("logits".into(), ours)], &BTreeMap::new()).unwrap();
        let base = fixtures().join(case).join("base");
        let peft_file = fixtures().join(case).join("adapter").join("adapter_model.safetensors");
        common::python_agrees(
            &format!(
                r#"
import sys, warnings, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from peft import PeftModel
from safetensors.torch import load_file
out = Path(sys.argv[1])
base = AutoModelForCausalLM.from_pretrained("{base}").eval()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = PeftModel.from_pretrained(base, out).eval()
assert not any("missing adapter keys" in str(w.message) for w in caught), [str(w.message) for w in caught]
exp = load_file(out / "expected.safetensors")
with torch.no_grad():
    got = model(input_ids=exp["ids"]).logits
torch.testing.assert_close(got, exp["logits"], rtol=1e-4, atol=1e-4)
ours, theirs = load_file(out / "adapter_model.safetensors"), load_file("{peft_file}")
assert {{k: (v.shape, v.dtype) for k, v in ours.items()}} == {{k: (v.shape, v.dtype) for k, v in theirs.items()}}, "the same keys, shapes and dtypes as peft's own file"
"#,
                base = base.display(),
                peft_file = peft_file.display()
            ),
            &out,
        );
    }
}

#[test]
fn adapters_that_do_not_fit_are_refused_by_name_and_change_nothing() {
    let mut model = checkpoint::load(fixtures().join("lora-llama").join("base"), Device::Cpu).unwrap().model;
    let checksum = model.checksum().unwrap();
    let mut refuse = |adapter: tchlab::models::lora::Adapter, says: &str| {
        let e = model.load_peft(adapter).unwrap_err().to_string();
        assert!(e.contains(says), "expected {says:?} in: {e}");
        assert!(model.adapters().is_none());
    };
    // GPT-2's adapter on a Llama: none of its modules is there.
    refuse(peft::read(&fixtures().join("lora-gpt").join("adapter")).unwrap(), "matches no linear layer");
    // The right modules, the wrong rank.
    let mut wrong = peft::read(&fixtures().join("lora-llama").join("adapter")).unwrap();
    wrong.config.r = 2;
    refuse(wrong, "r = 2 needs");
    // A module missing.
    let mut missing = peft::read(&fixtures().join("lora-llama").join("adapter")).unwrap();
    missing.weights.remove("model.layers.1.mlp.up_proj");
    refuse(missing, "no weights for `model.layers.1.mlp.up_proj`");
    // NaN in a weight.
    let nan = peft::read(&fixtures().join("lora-llama").join("adapter")).unwrap();
    let _ = nan.weights["model.layers.0.self_attn.q_proj"].0.shallow_clone().fill_(f64::NAN);
    refuse(nan, "NaN");
    assert_eq!(model.checksum().unwrap(), checksum);
}

#[test]
fn targets_read_as_names_all_linear_or_a_pattern() {
    assert_eq!(Targets::parse("q_proj, v_proj").unwrap(), Targets::Names(vec!["q_proj".into(), "v_proj".into()]));
    assert_eq!(Targets::parse("all-linear").unwrap(), Targets::AllLinear);
    assert_eq!(Targets::parse(r".*\.(q|v)_proj").unwrap(), Targets::Pattern(r".*\.(q|v)_proj".into()));
    assert!(Targets::parse(" , ").is_err());
}

#[test]
fn an_adapter_trained_on_smollm2_from_its_gguf_loads_in_peft_over_transformers_reading_the_same_file() {
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("smollm2.json")).unwrap()).unwrap();
    let file = reference["file"].as_str().unwrap();
    let mut model = checkpoint::load(file, Device::Cpu).unwrap().model;
    tch::manual_seed(5);
    model.add_lora(&LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, ..Default::default() }, Init::Default).unwrap();
    // B starts at zero: give it values, as training would, so that the adapter matters.
    for (_, (_, b)) in model.lora_weights() {
        tch::no_grad(|| b.shallow_clone().copy_(&(Tensor::randn(b.size(), (tch::Kind::Float, Device::Cpu)) * 0.05)));
    }
    let ids = Tensor::from_slice(&[1i64, 504, 3575, 282, 4649, 314]).unsqueeze(0);
    let ours = logits(&model, &ids);
    let dir = common::scratch("lora-smollm2");
    let (config, weights) = model.peft_adapter(Some(file.to_string()), "CAUSAL_LM").unwrap();
    peft::write(&dir.join("adapter"), &config, &weights).unwrap();
    tchlab::formats::safetensors::write(&dir.join("expected.safetensors"), &[("ids".into(), ids), ("logits".into(), ours)], &BTreeMap::new()).unwrap();
    common::python_agrees(
        &format!(
            r#"
import sys, os, warnings, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from peft import PeftModel
from safetensors.torch import load_file
out = Path(sys.argv[1])
path = "{file}"
base = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = PeftModel.from_pretrained(base, out / "adapter").eval()
assert not any("missing adapter keys" in str(w.message) for w in caught), [str(w.message) for w in caught]
exp = load_file(out / "expected.safetensors")
with torch.no_grad():
    got = model(input_ids=exp["ids"]).logits
scale = exp["logits"].abs().max()
assert (got - exp["logits"]).abs().max() <= 1e-4 * scale, float((got - exp["logits"]).abs().max() / scale)
"#
        ),
        &dir,
    );
}
