//! GPT-2 parity with `transformers`: logits and greedy generation of random
//! `GPT2LMHeadModel`s in every file layout `save_pretrained` and `torch.save` write,
//! and one AdamW step against `torch.optim.AdamW`.

mod common;

use common::{assert_close, fixture_tensor, fixtures};
use tch::{Device, Kind, Tensor};
use tchlab::checkpoint;
use tchlab::generate::{generate, GenerateOptions};
use tchlab::generation_config::Constraints;
use tchlab::models::ForwardOptions;
use tchlab::train::optim::{Method, Optimizer};

fn check_logits_and_greedy(dir: &str) {
    let path = fixtures().join(dir);
    let loaded = checkpoint::load(&path, Device::Cpu).unwrap();
    assert!(loaded.report.missing.is_empty());
    let gpt = common::Lm(&loaded.model);
    let reference = path.join("reference.safetensors");
    let ids = fixture_tensor(&reference, "input_ids");
    let logits = tch::no_grad(|| gpt.forward(&ids, &ForwardOptions::default(), None).unwrap().logits);
    assert_close(&logits, &fixture_tensor(&reference, "logits"), 1e-4, &format!("{dir} logits"));

    let prompt: Vec<i64> = Vec::try_from(fixture_tensor(&reference, "prompt")).unwrap();
    let expected: Vec<i64> = Vec::try_from(fixture_tensor(&reference, "greedy")).unwrap();
    let opts = GenerateOptions { max_new_tokens: 24, stop_ids: loaded.model.config().eos_token_ids(), ..Default::default() };
    assert_eq!(generate(&loaded.model, &prompt, &opts).unwrap(), expected, "{dir}: greedy generation differs from transformers");
}

#[test]
fn safetensors_checkpoint_matches_transformers() {
    check_logits_and_greedy("gpt-a");
    check_logits_and_greedy("gpt-b");
}

#[test]
fn generation_slides_past_the_context() {
    let loaded = checkpoint::load(fixtures().join("gpt-a"), Device::Cpu).unwrap();
    let prompt: Vec<i64> = (0..70).map(|i| i % 50).collect(); // longer than the 64 positions
    let opts = GenerateOptions { max_new_tokens: 100, ..Default::default() };
    let out = generate(&loaded.model, &prompt, &opts).unwrap();
    assert_eq!(out.len(), 100, "generation goes on past the context");
    // The first token only sees the last 64 prompt tokens: the same as a cropped prompt.
    let cropped = generate(&loaded.model, &prompt[6..], &GenerateOptions { max_new_tokens: 1, ..Default::default() }).unwrap();
    assert_eq!(out[0], cropped[0]);
}

#[test]
fn pytorch_model_bin_matches_transformers() {
    check_logits_and_greedy("gpt-b-bin");
}

#[test]
fn sharded_checkpoint_matches_transformers() {
    let loaded = checkpoint::load(fixtures().join("gpt-a-sharded"), Device::Cpu).unwrap();
    assert_eq!(loaded.report.files.len(), 8, "every shard is read");
    check_logits_and_greedy("gpt-a-sharded");
}

#[test]
fn single_pt_file_with_config_beside_it_matches_transformers() {
    let path = fixtures().join("gpt-a-pt/weights.pt");
    let loaded = checkpoint::load(&path, Device::Cpu).unwrap();
    let gpt = common::Lm(&loaded.model);
    let reference = fixtures().join("gpt-a-pt/reference.safetensors");
    let logits = tch::no_grad(|| gpt.forward(&fixture_tensor(&reference, "input_ids"), &ForwardOptions::default(), None).unwrap().logits);
    assert_close(&logits, &fixture_tensor(&reference, "logits"), 1e-4, "weights.pt logits");
}

#[test]
fn attention_capture_matches_fused_attention() {
    let loaded = checkpoint::load(fixtures().join("gpt-b"), Device::Cpu).unwrap();
    let gpt = common::Lm(&loaded.model);
    let ids = fixture_tensor(&fixtures().join("gpt-b/reference.safetensors"), "input_ids");
    let fused = tch::no_grad(|| gpt.forward(&ids, &ForwardOptions::default(), None).unwrap());
    let captured = tch::no_grad(|| gpt.forward(&ids, &ForwardOptions { capture_attention: true, ..Default::default() }, None).unwrap());
    assert!(fused.attentions.is_none());
    assert_close(&fused.logits, &captured.logits, 1e-5, "logits with and without capture");
    let attentions = captured.attentions.unwrap();
    assert_eq!(attentions.len(), 3);
    assert_eq!(attentions[0].size(), vec![3, 4, 17, 17]); // (B, nh, T, T)
    let rows = attentions[1].sum_dim_intlist(-1, false, Kind::Double);
    assert_close(&rows, &rows.ones_like(), 1e-5, "attention rows sum to one");
    let above_diagonal = attentions[2].triu(1).abs().max().double_value(&[]);
    assert_eq!(above_diagonal, 0.0, "no position attends to the future");
}

#[test]
fn kv_cache_gives_the_same_logits_as_a_full_pass() {
    let loaded = checkpoint::load(fixtures().join("gpt-a"), Device::Cpu).unwrap();
    let gpt = common::Lm(&loaded.model);
    let ids = fixture_tensor(&fixtures().join("gpt-a/reference.safetensors"), "input_ids").narrow(0, 0, 1);
    let opts = ForwardOptions::default();
    let full = tch::no_grad(|| gpt.forward(&ids, &opts, None).unwrap().logits);
    let mut cache = Default::default();
    let first = tch::no_grad(|| gpt.forward(&ids.narrow(1, 0, 10), &opts, Some(&mut cache)).unwrap().logits);
    let rest = tch::no_grad(|| gpt.forward(&ids.narrow(1, 10, 7), &opts, Some(&mut cache)).unwrap().logits);
    assert_close(&Tensor::cat(&[first, rest], 1), &full, 1e-5, "cached logits");
}

/// Every GPT-2 parameter, in Hugging Face layout, after the optimiser's steps.
fn updated(model: &tchlab::models::Model) -> Vec<(String, Tensor)> {
    let updated = checkpoint::hf_state_dict(model).unwrap();
    assert_eq!(updated.len(), 2 + 2 + 2 * 12, "every GPT-2 parameter is compared: wte, wpe, ln_f and 12 per block");
    updated
}

#[test]
fn two_sgd_steps_with_momentum_match_pytorch() {
    let loaded = checkpoint::load(fixtures().join("gpt-a"), Device::Cpu).unwrap();
    let gpt = common::Lm(&loaded.model);
    let file = fixtures().join("sgd_steps.safetensors");
    let ids = fixture_tensor(&file, "input_ids");
    let t = ids.size()[1];
    let mut opt = Optimizer::new(&loaded.model.vars, Method::Sgd { momentum: 0.9 }, 0.1, 0.01).unwrap();
    for _ in 0..2 {
        let logits = gpt.forward(&ids, &ForwardOptions { train: true, ..Default::default() }, None).unwrap().logits;
        let loss = tchlab::train::lm_loss(&logits.narrow(1, 0, t - 1), &ids.narrow(1, 1, t - 1));
        opt.zero_grad();
        loss.backward();
        opt.step().unwrap();
    }
    common::assert_updated_like(updated(&loaded.model), &file, None);
}

#[test]
fn one_adamw_step_matches_pytorch() {
    let loaded = checkpoint::load(fixtures().join("gpt-a"), Device::Cpu).unwrap();
    let gpt = common::Lm(&loaded.model);
    let file = fixtures().join("adamw_step.safetensors");
    let ids = fixture_tensor(&file, "input_ids");
    let t = ids.size()[1];
    let logits = gpt.forward(&ids, &ForwardOptions { train: true, ..Default::default() }, None).unwrap().logits;
    // transformers' labels=ids: position i predicts token i + 1.
    let loss = tchlab::train::lm_loss(&logits.narrow(1, 0, t - 1), &ids.narrow(1, 1, t - 1));
    common::adamw_step_like_pytorch(&loaded.model, loss, &file, 1e-2);
    common::assert_updated_like(updated(&loaded.model), &file, Some(1e-2));
}

/// Beam search against transformers' `generate(num_beams=4, num_return_sequences=2)` on
/// random GPT-2 and Llama models, over length penalties, every early-stopping rule,
/// n-gram bans and two lengths: the same hypotheses and scores. The stop tokens are two
/// the model itself produces greedily, so that hypotheses do end before the limit.
#[test]
fn beam_search_finds_what_transformers_finds() {
    use tchlab::beam::{beam_search, BeamOptions, EarlyStopping};
    let dir = common::scratch("beam-search");
    let mut cases = vec![];
    for model in ["gpt-a", "llama-gqa"] {
        let loaded = checkpoint::load(fixtures().join(model), Device::Cpu).unwrap();
        let prompt = vec![3i64, 17, 42, 8, 23, 5];
        let greedy = generate(&loaded.model, &prompt, &GenerateOptions { max_new_tokens: 6, ..Default::default() }).unwrap();
        let mut stop_ids = vec![greedy[2], greedy[4]];
        stop_ids.dedup();
        for length_penalty in [1.0, 2.0, 0.0, -1.0] {
            for (early_stopping, early_name) in [(EarlyStopping::Heuristic, "false"), (EarlyStopping::AtOnce, "true"), (EarlyStopping::Never, "never")] {
                for no_repeat_ngram in [0, 2] {
                    for max_new_tokens in [6, 14] {
                        let constraints = Constraints { no_repeat_ngram, ..Default::default() };
                        let opts =
                            BeamOptions { beams: 4, max_new_tokens, length_penalty, early_stopping, returns: 2, stop_ids: stop_ids.clone(), constraints };
                        let found = beam_search(&loaded.model, &prompt, &opts).unwrap();
                        cases.push(serde_json::json!({
                            "model": model, "prompt": prompt, "eos": stop_ids, "length_penalty": length_penalty, "early_stopping": early_name,
                            "no_repeat_ngram": no_repeat_ngram, "max_new_tokens": max_new_tokens,
                            "ids": found.iter().map(|h| h.ids.clone()).collect::<Vec<_>>(), "scores": found.iter().map(|h| h.score).collect::<Vec<_>>(),
                        }));
                    }
                }
            }
        }
    }
    std::fs::write(dir.join("cases.json"), serde_json::Value::from(cases).to_string()).unwrap();
    common::python_agrees(
        r#"
import json, os, sys
import torch
from transformers import AutoModelForCausalLM
d = sys.argv[1]
fixtures = os.environ["TCHLAB_FIXTURES"]
models = {}
bad, ended = [], 0
for c in json.load(open(d + "/cases.json")):
    if c["model"] not in models:
        models[c["model"]] = AutoModelForCausalLM.from_pretrained(os.path.join(fixtures, c["model"])).eval()
    early = {"false": False, "true": True, "never": "never"}[c["early_stopping"]]
    fill = c["eos"][0]
    ids = torch.tensor([c["prompt"]])
    with torch.no_grad():
        out = models[c["model"]].generate(ids, attention_mask=torch.ones_like(ids), num_beams=4, num_return_sequences=2, do_sample=False,
                                          max_new_tokens=c["max_new_tokens"], length_penalty=c["length_penalty"], early_stopping=early,
                                          no_repeat_ngram_size=c["no_repeat_ngram"], eos_token_id=c["eos"], pad_token_id=fill,
                                          output_scores=True, return_dict_in_generate=True)
    theirs = [row[len(c["prompt"]):] for row in out.sequences.tolist()]
    ours = [h + [fill] * (len(t) - len(h)) for h, t in zip(c["ids"], theirs)]
    ended += any(len(h) < c["max_new_tokens"] for h in c["ids"])
    if ours != theirs or not torch.allclose(out.sequences_scores.float(), torch.tensor(c["scores"]).float(), atol=1e-5):
        bad.append((c, theirs, out.sequences_scores.tolist()))
for b in bad:
    print("MISMATCH", b)
print(len(bad), "of", len(json.load(open(d + "/cases.json"))), "settings differ;", ended, "with a hypothesis that ended early")
assert not bad
assert ended > 10, "the stop tokens end hypotheses in many settings"
"#,
        &dir,
    );
}
