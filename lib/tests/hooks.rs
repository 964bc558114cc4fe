//! Hook points and the analyses on them, against PyTorch: activations cached under
//! TransformerLens names equal what forward hooks take from the transformers models
//! (GPT-2, BERT, Llama-style, Gemma 3, GPT-NeoX, SmolLM2); ablated forward passes equal the same ablation
//! done with hooks in PyTorch; the patching heatmap and SmolLM2's induction scores equal
//! the fixture script's.

mod common;

use common::{assert_close, fixture_tensor, fixtures};
use tch::{Device, Kind, Tensor};
use tchlab::checkpoint;
use tchlab::inspect::{self, Ablation, Component, HeadScore, Metric, PatchOver};
use tchlab::models::hooks::{Action, Edit, Hooks, Names};
use tchlab::models::Model;

fn load(name: &str) -> Model {
    let path = match name {
        "smollm2" => {
            let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("smollm2.json")).unwrap()).unwrap();
            r["file"].as_str().unwrap().into()
        }
        "minilm" => {
            let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("minilm.json")).unwrap()).unwrap();
            r["model_dir"].as_str().unwrap().into()
        }
        other => fixtures().join(other),
    };
    checkpoint::load(path, Device::Cpu).unwrap().model
}

fn reference(name: &str) -> Vec<(String, Tensor)> {
    checkpoint::read_file(&fixtures().join(format!("hooks-{name}.safetensors"))).unwrap()
}

/// Within 1e-4, relative to the reference's largest magnitude where that is over 1:
/// SmolLM2's residual stream grows to hundreds and its logits to 30, where float32 sums
/// in another order differ by more than 1e-4.
fn assert_close_scaled(ours: &Tensor, theirs: &Tensor, what: &str) {
    let scale = theirs.abs().max().double_value(&[]).max(1.0);
    assert_close(ours, theirs, 1e-4 * scale, &format!("{what} (largest magnitude {scale:.1})"));
}

fn activations_match(name: &str, expected_points: usize) {
    let model = load(name);
    let reference = reference(name);
    let ids = &reference.iter().find(|(n, _)| n == "input_ids").unwrap().1;
    let (_, cache) = inspect::run_with_cache(&model, ids, &Names::all(), 1 << 30).unwrap();
    let points = inspect::hook_points(&model, 3).unwrap();
    assert_eq!(points.len(), expected_points, "{name}: hook points {:?}", points.iter().map(|p| &p.0).collect::<Vec<_>>());
    let mut compared = 0;
    for (hook, theirs) in reference.iter().filter(|(n, _)| n.starts_with("blocks.") || n.starts_with("hook_") || n.starts_with("ln_final")) {
        let ours = cache.iter().find(|(n, _)| n == hook).unwrap_or_else(|| panic!("{name}: no hook point {hook}")).1.shallow_clone();
        assert_close_scaled(&ours, theirs, &format!("{name}: {hook}"));
        compared += 1;
    }
    assert!(compared >= 10, "{name}: compared {compared}");
}

#[test]
fn gpt2_activations_equal_pytorch_forward_hooks() {
    // 3 outside the blocks, 15 in each of 2 blocks (no rotary, no gated MLP).
    activations_match("gpt-a", 3 + 2 * 15);
}

#[test]
fn llama_activations_equal_pytorch_forward_hooks() {
    activations_match("llama-gqa", 2 + 2 * 18);
}

#[test]
fn gemma3_activations_equal_pytorch_forward_hooks() {
    // hook_attn_out and hook_mlp_out are the post-norms' outputs, as in TransformerLens.
    activations_match("gemma3-small", 2 + 3 * 18);
}

#[test]
fn gpt_neox_activations_equal_pytorch_forward_hooks() {
    // Parallel residual: no hook_resid_mid; the fused projection's queries and keys, rotated in part.
    activations_match("neox", 2 + 2 * 16);
}

#[test]
fn smollm2_activations_equal_pytorch_forward_hooks() {
    activations_match("smollm2", 2 + 30 * 18);
}

#[test]
fn bert_activations_equal_pytorch_forward_hooks() {
    activations_match("minilm", 3 + 6 * 15);
}

#[test]
fn ablations_equal_the_same_ablations_in_pytorch() {
    for name in ["gpt-a", "llama-gqa", "gemma3-small", "neox", "smollm2"] {
        let model = load(name);
        let reference = reference(name);
        let tensor = |n: &str| reference.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
        let ids = tensor("input_ids");
        let zero_head = Hooks::new().edit(Edit::new(Names::one("blocks.1.attn.hook_z"), Action::Zero).head(1));
        let (out, _) = inspect::run_with_hooks(&model, &ids, zero_head).unwrap();
        assert_close_scaled(&out.logits.unwrap(), &tensor("ablated.head_1_1"), &format!("{name}: head 1.1 zeroed"));
        // Scaling a head by zero is the same edit.
        let scaled = Hooks::new().edit(Edit::new(Names::one("blocks.1.attn.hook_z"), Action::Scale(0.0)).head(1));
        assert_close_scaled(&inspect::run_with_hooks(&model, &ids, scaled).unwrap().0.logits.unwrap(), &tensor("ablated.head_1_1"), "scaled by 0");
        // Mean ablation through the library's means (over every row and position).
        let (_, cache) = inspect::run_with_cache(&model, &ids, &Names::one("blocks.0.hook_mlp_out"), 1 << 30).unwrap();
        let mean = cache[0].1.mean_dim([0, 1].as_slice(), true, Kind::Double).to_kind(Kind::Float);
        let (out, _) = inspect::run_with_hooks(&model, &ids, Hooks::new().edit(Edit::new(Names::one("blocks.0.hook_mlp_out"), Action::Replace(mean)))).unwrap();
        assert_close_scaled(&out.logits.unwrap(), &tensor("ablated.mlp_0_mean"), &format!("{name}: MLP 0 mean-ablated"));
        let batch = inspect::text_batch(&ids).unwrap();
        let (base, ablated) = inspect::ablate(&model, std::slice::from_ref(&batch), &[Component::Mlp(0)], Ablation::Mean, Metric::Loss).unwrap();
        let expected = Metric::Loss.per_row(&tensor("ablated.mlp_0_mean"), &batch.targets).unwrap();
        assert!((ablated - expected.iter().sum::<f64>() / expected.len() as f64).abs() < 1e-4, "{name}: {ablated} vs {expected:?}");
        assert!((base - ablated).abs() > 1e-6, "{name}: the ablation changed the loss");
    }
}

#[test]
fn the_patching_heatmap_equals_pytorch() {
    let model = load("llama-gqa");
    let file = fixtures().join("patching.safetensors");
    let tokens = Vec::<i64>::try_from(fixture_tensor(&file, "tokens")).unwrap();
    let patching =
        inspect::patch(&model, &fixture_tensor(&file, "clean"), &fixture_tensor(&file, "corrupt"), Metric::LogitDiff(tokens[0], tokens[1]), PatchOver::Resid)
            .unwrap();
    let ours = Tensor::from_slice2(&patching.restored).to_kind(Kind::Float);
    assert_close(&ours, &fixture_tensor(&file, "restored"), 1e-3, "restored fraction per layer and position");
    // Patching every position of the first block's input restores the clean run exactly
    // at the changed position: the rest of the text is the same.
    assert!((patching.restored[0][2] - 1.0).abs() < 1e-4, "{:?}", patching.restored[0]);
}

#[test]
fn induction_scores_name_the_same_heads_as_pytorch() {
    let model = load("smollm2");
    let file = fixtures().join("induction.safetensors");
    let scores = inspect::head_scores(&model, &fixture_tensor(&file, "input_ids"), 1, HeadScore::Induction).unwrap();
    let ours = Tensor::from_slice2(&scores.scores).to_kind(Kind::Float);
    let theirs = fixture_tensor(&file, "scores");
    assert_close(&ours, &theirs, 1e-4, "induction scores");
    let top = |t: &Tensor| Vec::<i64>::try_from(t.reshape([-1]).topk(5, 0, true, true).1).unwrap();
    assert_eq!(top(&ours), top(&theirs), "the five strongest induction heads");
    assert!(scores.repeat_loss < scores.first_loss - 1.0, "a repeat is easier: {} vs {}", scores.repeat_loss, scores.first_loss);
}

#[test]
fn attributions_sum_to_the_logit_and_the_lens_ends_at_the_output() {
    for name in ["gpt-a", "llama-gqa"] {
        let model = load(name);
        let ids = reference(name).into_iter().find(|(n, _)| n == "input_ids").unwrap().1.narrow(0, 0, 1);
        let a = inspect::attribute(&model, &ids, 5).unwrap();
        let total = a.embed + a.attn.iter().sum::<f64>() + a.mlp.iter().sum::<f64>() + a.norm_bias;
        assert!((total - a.logit).abs() < 1e-3, "{name}: parts sum to {total}, logit {}", a.logit);
        // Heads and the output bias make up each layer's attention share.
        let lens = inspect::logit_lens(&model, &ids, 3).unwrap();
        let out = inspect::run_with_hooks(&model, &ids, Hooks::new()).unwrap().0.logits.unwrap();
        let best = Vec::<i64>::try_from(out.get(0).argmax(-1, false)).unwrap();
        let last_row: Vec<i64> = lens.top.last().unwrap().iter().map(|p| p[0].0).collect();
        assert_eq!(last_row, best, "{name}: the last layer's lens is the model's prediction");
        assert_eq!(lens.rows.len() as i64, model.config().dims().layers + 1);
    }
}

#[test]
fn unknown_names_and_budgets_are_refused_with_what_to_do() {
    let model = load("gpt-a");
    let ids = Tensor::from_slice(&[1i64, 2, 3]).unsqueeze(0);
    let err = inspect::run_with_cache(&model, &ids, &Names::one("blocks.0.hook_resid_prе"), 1 << 30).unwrap_err().to_string();
    assert!(err.contains("did you mean blocks.0.hook_resid_pre"), "{err}");
    let err = inspect::run_with_cache(&model, &ids, &Names::all(), 1000).unwrap_err().to_string();
    assert!(err.contains("over the cache budget of 1.0 KiB") && err.contains("--names"), "{err}");
    let err = inspect::run_with_hooks(&model, &ids, Hooks::new().edit(Edit::new(Names::one("hook_embed"), Action::Zero).head(0))).unwrap_err().to_string();
    assert!(err.contains("has no head axis"), "{err}");
    let err = inspect::patch(&model, &ids, &ids.narrow(1, 0, 2), Metric::LogitDiff(1, 2), PatchOver::Resid).unwrap_err().to_string();
    assert!(err.contains("the same number"), "{err}");
    let err = inspect::patch(&model, &ids, &ids, Metric::LogitDiff(1, 2), PatchOver::Resid).unwrap_err().to_string();
    assert!(err.contains("no difference"), "{err}");
    assert!(Component::parse("2.0", 2, 2).unwrap_err().to_string().contains("outside the model's layers"));
    assert!(Component::parse("1.9", 2, 2).unwrap_err().to_string().contains("outside the model's heads"));
    assert!(Component::parse("x.y", 2, 2).is_err());
}
