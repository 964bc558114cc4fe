//! T5 parity with `transformers`: random `T5ForConditionalGeneration` checkpoints (v1.0
//! with a ReLU MLP and a tied, rescaled head; v1.1 with a gated GELU, an untied head,
//! heads × d_kv ≠ d_model and fewer decoder than encoder blocks): the encoder's output
//! and the logits over a padded batch, eager self- and cross-attention probabilities
//! through the hook points, the cache against the whole target, greedy generation, beam
//! searches in four settings (sequences and scores), one AdamW step, pairs batched as
//! transformers batches labels, and a save transformers reads back.

mod common;

use std::collections::BTreeMap;

use common::{fixture_tensor, fixtures, seq2seq};
use tch::{Device, Tensor};
use tchlab::beam::{beam_search, BeamOptions, EarlyStopping};
use tchlab::checkpoint;
use tchlab::formats::safetensors;
use tchlab::generate::{generate, GenerateOptions};
use tchlab::generation_config::Constraints;
use tchlab::models::layers::Source;
use tchlab::models::{ForwardOptions, KvCache};

const MODELS: &[&str] = &["t5-v1", "t5-v11"];

#[test]
fn encoder_output_logits_and_attention_match_transformers() {
    seq2seq::outputs_and_attention_match("t5-v1", 2);
    seq2seq::outputs_and_attention_match("t5-v11", 3);
}

#[test]
fn a_tied_checkpoint_has_no_lm_head_and_the_v1_1_one_does() {
    for (dir, tied) in [("t5-v1", true), ("t5-v11", false)] {
        let file = checkpoint::read_file(&fixtures().join(dir).join("model.safetensors")).unwrap();
        assert_eq!(file.iter().any(|(k, _)| k == "lm_head.weight"), !tied, "{dir}: lm_head.weight in the file");
        let loaded = checkpoint::load(fixtures().join(dir), Device::Cpu).unwrap();
        assert_eq!(loaded.model.vars.variables().contains_key("lm_head.weight"), !tied, "{dir}: an lm_head variable");
    }
}

#[test]
fn the_cache_gives_the_logits_of_the_whole_target() {
    for dir in MODELS {
        seq2seq::the_cache_gives_the_whole_targets_logits(dir);
    }
}

#[test]
fn greedy_generation_and_beam_search_match_transformers() {
    for dir in MODELS {
        let path = fixtures().join(dir);
        let loaded = checkpoint::load(&path, Device::Cpu).unwrap();
        let reference = path.join("reference.safetensors");
        let prompt: Vec<i64> = Vec::try_from(fixture_tensor(&reference, "prompt")).unwrap();
        let expected: Vec<i64> = Vec::try_from(fixture_tensor(&reference, "greedy")).unwrap();
        let opts = GenerateOptions { max_new_tokens: 16, stop_ids: loaded.model.config().eos_token_ids(), ..Default::default() };
        assert_eq!(generate(&loaded.model, &prompt, &opts).unwrap(), expected, "{dir}: greedy generation differs from transformers");

        let searches: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path.join("beams.json")).unwrap()).unwrap();
        for search in searches.as_array().unwrap() {
            let number = |key: &str| search[key].as_f64().unwrap();
            let early_stopping = match &search["early_stopping"] {
                serde_json::Value::Bool(true) => EarlyStopping::AtOnce,
                serde_json::Value::Bool(false) => EarlyStopping::Heuristic,
                _ => EarlyStopping::Never,
            };
            let opts = BeamOptions {
                beams: number("beams") as usize,
                returns: number("returns") as usize,
                max_new_tokens: number("max_new_tokens") as usize,
                length_penalty: number("length_penalty"),
                early_stopping,
                stop_ids: vec![number("eos") as i64],
                constraints: Constraints { no_repeat_ngram: number("no_repeat_ngram") as usize, ..Default::default() },
            };
            let found = beam_search(&loaded.model, &prompt, &opts).unwrap();
            let want = search["hypotheses"].as_array().unwrap();
            assert_eq!(found.len(), want.len(), "{dir} {opts:?}");
            for (h, w) in found.iter().zip(want) {
                let ids: Vec<i64> = w["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
                assert_eq!(h.ids, ids, "{dir} {opts:?}: the hypotheses differ from transformers'");
                let score = w["score"].as_f64().unwrap();
                assert!((h.score - score).abs() <= 1e-5 * score.abs().max(1.0), "{dir} {opts:?}: score {} vs transformers' {score}", h.score);
            }
        }
    }
}

#[test]
fn one_adamw_step_matches_pytorch() {
    let loaded = checkpoint::load(fixtures().join("t5-v11"), Device::Cpu).unwrap();
    let file = fixtures().join("t5_adamw_step.safetensors");
    let (source, labels) = (fixture_tensor(&file, "input_ids"), fixture_tensor(&file, "labels"));
    // The decoder reads the labels shifted right behind the start id (0), as transformers does.
    let inputs = Tensor::cat(&[labels.zeros_like().narrow(1, 0, 1), labels.narrow(1, 0, labels.size()[1] - 1)], 1);
    let train = ForwardOptions { train: true, ..Default::default() };
    let hidden = loaded.model.encode(&source, None, &train).unwrap();
    let mut cache = KvCache::for_source(Source { hidden, mask: None });
    let logits = loaded.model.forward(&inputs, None, &train, Some(&mut cache)).unwrap().logits.unwrap();
    let updated = common::adamw_step_like_pytorch(&loaded.model, tchlab::train::lm_loss(&logits, &labels), &file, 1e-3);
    assert!(updated.iter().any(|(n, _)| n == "decoder.block.0.layer.1.EncDecAttention.q.weight") && updated.iter().any(|(n, _)| n == "lm_head.weight"));
    common::assert_updated_like(updated, &file, Some(1e-3));
}

#[test]
fn what_tchlab_saves_transformers_loads_with_the_same_logits() {
    for dir in MODELS {
        seq2seq::transformers_reads_back_what_is_saved(dir, "decoder.block.0.layer.1.EncDecAttention.q.weight", 0, "");
    }
}

#[test]
fn pairs_are_batched_and_scored_as_transformers_does_with_labels() {
    use tchlab::data::pairs::{Pairs, PairsFit};
    let dir = fixtures().join("t5-v1");
    let loaded = checkpoint::load(&dir, Device::Cpu).unwrap();
    let tokenizer = loaded.tokenizer.as_ref().expect("the fixture has a tokenizer.json");
    // Sources and targets of different lengths, so that both are padded.
    let out = common::scratch("t5-pairs");
    let mut lines = String::new();
    for i in 0..12 {
        let source: Vec<String> = (0..3 + i % 5).map(|j| format!("w{}", 3 + (7 * i + 5 * j) % 90)).collect();
        let target: Vec<String> = (0..1 + i % 4).map(|j| format!("w{}", 3 + (11 * i + 3 * j) % 90)).collect();
        lines.push_str(&serde_json::json!({"en": source.join(" "), "de": target.join(" ")}).to_string());
        lines.push('\n');
    }
    std::fs::write(out.join("pairs.jsonl"), &lines).unwrap();
    let fit = PairsFit { pad_id: 0, start: 0, max_len: 64 };
    let pairs = Pairs::from_file(&out.join("pairs.jsonl"), ("en", "de"), tokenizer, &fit, 0.5, 3).unwrap();
    assert_eq!(pairs.sizes(), (6, 6));
    let batch = pairs.val_batches(64).pop().unwrap();
    let (source, mask) = (batch.source.unwrap(), batch.mask.unwrap());
    let hidden = tch::no_grad(|| loaded.model.encode(&source, Some(&mask), &ForwardOptions::default()).unwrap());
    let (logits, _) = seq2seq::decode(&loaded.model, &hidden, Some(&mask), &batch.inputs, &ForwardOptions::default());
    let loss = tchlab::train::lm_loss(&logits, &batch.targets);
    let tensors = [("source".into(), source), ("mask".into(), mask), ("inputs".into(), batch.inputs), ("targets".into(), batch.targets), ("loss".into(), loss)];
    safetensors::write(&out.join("batch.safetensors"), &tensors, &BTreeMap::new()).unwrap();
    std::fs::copy(dir.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
    let script = r#"
import json, sys, torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoModelForSeq2SeqLM
d = sys.argv[1]
ours = load_file(d + "/batch.safetensors")
tok = Tokenizer.from_file(d + "/tokenizer.json")
records = [json.loads(l) for l in open(d + "/pairs.jsonl")]
examples = {tuple(tok.encode(r["en"]).ids): tok.encode(r["de"]).ids for r in records}
model = AutoModelForSeq2SeqLM.from_pretrained(open(d + "/model.txt").read()).eval()
for source, mask, target in zip(ours["source"], ours["mask"], ours["targets"]):
    ids = tuple(source[mask.bool()].tolist())
    assert ids in examples, f"source {ids} is no record's tokenised source"
    assert target[target != -100].tolist() == examples[ids], "the target is the record's tokenised target, end token included"
assert torch.equal(ours["inputs"], model._shift_right(ours["targets"])), "decoder inputs are transformers' labels shifted right"
with torch.no_grad():
    theirs = model(input_ids=ours["source"], attention_mask=ours["mask"], labels=ours["targets"]).loss
assert abs(theirs.item() - ours["loss"].item()) < 1e-5, f"loss {ours['loss'].item()} vs transformers' {theirs.item()}"
"#;
    std::fs::write(out.join("model.txt"), dir.display().to_string()).unwrap();
    common::python_agrees(script, &out);
}
