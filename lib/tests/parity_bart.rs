//! BART and Marian parity with `transformers`: random `BartForConditionalGeneration` and
//! `MarianMTModel` checkpoints (learned positions with a LayerNorm, GELU; sinusoids,
//! scaled embeddings, swish, a real head bias), each with a `generation_config.json` as
//! the hub's summarisers and OPUS-MT models carry: the encoder's output and the logits
//! over a padded batch, eager self- and cross-attention probabilities through the hook
//! points, the cache against the whole target, greedy generation and beam searches under
//! the generation config's forced tokens, bans, lengths and renormalisation, one AdamW
//! step, a `BartModel` file (bart-base's layout), and a save transformers reads back.

mod common;

use common::{assert_close, fixture_tensor, fixtures, seq2seq};
use serde_json::Value;
use tch::{Device, Tensor};
use tchlab::beam::{beam_search, BeamOptions, EarlyStopping};
use tchlab::checkpoint;
use tchlab::generate::{generate, GenerateOptions};
use tchlab::models::layers::Source;
use tchlab::models::{ForwardOptions, KvCache};

const MODELS: &[&str] = &["bart", "marian"];

fn ids_of(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|i| i.as_i64().unwrap()).collect()
}

#[test]
fn encoder_output_logits_and_attention_match_transformers() {
    for dir in MODELS {
        seq2seq::outputs_and_attention_match(dir, 3);
    }
}

#[test]
fn a_bart_model_file_without_prefix_or_head_bias_loads_as_transformers_reads_it() {
    let path = fixtures().join("bart-model");
    let file = checkpoint::read_file(&path.join("model.safetensors")).unwrap();
    assert!(file.iter().all(|(k, _)| !k.starts_with("model.") && k != "final_logits_bias"), "the fixture is BartModel's layout");
    let loaded = checkpoint::load(&path, Device::Cpu).unwrap();
    assert!(loaded.report.missing.is_empty() && loaded.report.unexpected.is_empty(), "{:?}", loaded.report);
    let reference = path.join("reference.safetensors");
    let (source, mask, target) = (fixture_tensor(&reference, "source"), fixture_tensor(&reference, "source_mask"), fixture_tensor(&reference, "target"));
    let hidden = tch::no_grad(|| loaded.model.encode(&source, Some(&mask), &ForwardOptions::default()).unwrap());
    let (logits, _) = seq2seq::decode(&loaded.model, &hidden, Some(&mask), &target, &ForwardOptions::default());
    assert_close(&logits, &fixture_tensor(&reference, "logits"), 1e-4, "BartModel logits");
}

#[test]
fn the_cache_gives_the_logits_of_the_whole_target() {
    for dir in MODELS {
        seq2seq::the_cache_gives_the_whole_targets_logits(dir);
    }
}

#[test]
fn the_generation_config_is_read_as_transformers_reads_it() {
    let bart = checkpoint::load(fixtures().join("bart"), Device::Cpu).unwrap().model;
    let g = &bart.generation;
    assert_eq!((g.num_beams, g.max_length, g.min_length, g.no_repeat_ngram_size, g.forced_bos_token_id), (Some(4), Some(14), Some(6), Some(3), Some(0)));
    assert_eq!((g.length_penalty, g.early_stopping(), g.eos_token_ids()), (Some(2.0), Some(EarlyStopping::AtOnce), Some(vec![2])));
    assert_eq!(g.max_new_tokens(1), Some(13), "max_length counts the decoder's start token");
    let c = g.constraints(&[2], 96).unwrap();
    assert_eq!((c.min_length, c.forced_bos, c.forced_eos.as_slice(), c.no_repeat_ngram, c.renormalize), (6, Some(0), &[2i64][..], 3, false));
    let marian = checkpoint::load(fixtures().join("marian"), Device::Cpu).unwrap().model;
    let c = marian.generation.constraints(&[0], 96).unwrap();
    assert_eq!((c.bad_words, c.renormalize, c.forced_eos), (vec![vec![95]], true, vec![0]));
    // Without generation_config.json, config.json's generation keys are the defaults, as
    // transformers' `from_model_config` takes them.
    let out = common::scratch("bart-no-generation-config");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("bart").join(file), out.join(file)).unwrap();
    }
    let g = checkpoint::load(&out, Device::Cpu).unwrap().model.generation;
    assert_eq!((g.num_beams, g.forced_eos_token_id.clone(), g.eos_token_ids()), (None, Some(Value::from(2)), Some(vec![2])));
}

#[test]
fn greedy_generation_and_beam_search_match_transformers() {
    for dir in MODELS {
        let path = fixtures().join(dir);
        let model = checkpoint::load(&path, Device::Cpu).unwrap().model;
        let reference = path.join("reference.safetensors");
        let prompt: Vec<i64> = Vec::try_from(fixture_tensor(&reference, "prompt")).unwrap();
        let eos = model.generation.eos_token_ids().unwrap();
        let vocab = model.config().vocab_size();
        let mut expected: Vec<i64> = Vec::try_from(fixture_tensor(&reference, "greedy")).unwrap();
        if let Some(end) = expected.iter().position(|id| eos.contains(id)) {
            expected.truncate(end + 1);
        }
        let opts = GenerateOptions {
            max_new_tokens: 16,
            stop_ids: eos.clone(),
            constraints: model.generation.constraints(&eos, vocab).unwrap(),
            ..Default::default()
        };
        assert_eq!(generate(&model, &prompt, &opts).unwrap(), expected, "{dir}: greedy generation differs from transformers");

        let searches: Value = serde_json::from_str(&std::fs::read_to_string(path.join("beams.json")).unwrap()).unwrap();
        for search in searches.as_array().unwrap() {
            let (asked, g) = (&search["asked"], &model.generation);
            let stop = vec![search["eos"].as_i64().unwrap()];
            let mut constraints = g.constraints(&stop, vocab).unwrap();
            if let Some(n) = asked["no_repeat_ngram_size"].as_u64() {
                constraints.no_repeat_ngram = n as usize;
            }
            let early_stopping = match &asked["early_stopping"] {
                Value::Bool(true) => EarlyStopping::AtOnce,
                Value::Bool(false) => EarlyStopping::Heuristic,
                Value::String(_) => EarlyStopping::Never,
                _ => g.early_stopping().unwrap_or(EarlyStopping::Heuristic),
            };
            let opts = BeamOptions {
                beams: asked["num_beams"].as_u64().map_or(g.num_beams.unwrap() as usize, |n| n as usize),
                returns: search["returns"].as_u64().unwrap() as usize,
                max_new_tokens: g.max_new_tokens(1).unwrap(),
                length_penalty: asked["length_penalty"].as_f64().or(g.length_penalty).unwrap_or(1.0),
                early_stopping,
                stop_ids: stop,
                constraints,
            };
            let found = beam_search(&model, &prompt, &opts).unwrap();
            let want = search["hypotheses"].as_array().unwrap();
            assert_eq!(found.len(), want.len(), "{dir} {opts:?}");
            for (h, w) in found.iter().zip(want) {
                assert_eq!(h.ids, ids_of(&w["ids"]), "{dir} {opts:?}: the hypotheses differ from transformers'");
                let score = w["score"].as_f64().unwrap();
                assert!((h.score - score).abs() <= 1e-5 * score.abs().max(1.0), "{dir} {opts:?}: score {} vs transformers' {score}", h.score);
            }
        }
    }
}

#[test]
fn one_adamw_step_matches_pytorch() {
    for (dir, start) in [("bart", 2i64), ("marian", 95)] {
        let loaded = checkpoint::load(fixtures().join(dir), Device::Cpu).unwrap();
        let file = fixtures().join(format!("{dir}_adamw_step.safetensors"));
        let (source, labels) = (fixture_tensor(&file, "input_ids"), fixture_tensor(&file, "labels"));
        // The decoder reads the labels shifted right behind its start id, as transformers does.
        let inputs = Tensor::cat(&[labels.full_like(start).narrow(1, 0, 1), labels.narrow(1, 0, labels.size()[1] - 1)], 1);
        let train = ForwardOptions { train: true, ..Default::default() };
        let hidden = loaded.model.encode(&source, None, &train).unwrap();
        let mut cache = KvCache::for_source(Source { hidden, mask: None });
        let logits = loaded.model.forward(&inputs, None, &train, Some(&mut cache)).unwrap().logits.unwrap();
        let bias_before = loaded.model.vars.variables()["final_logits_bias"].copy();
        let mut updated = common::adamw_step_like_pytorch(&loaded.model, tchlab::train::lm_loss(&logits, &labels), &file, 1e-3);
        assert!(updated.iter().any(|(n, _)| n == "model.decoder.layers.0.encoder_attn.q_proj.weight"), "{dir}");
        let (_, bias) = updated.remove(updated.iter().position(|(n, _)| n == "final_logits_bias").unwrap());
        assert!(bias.equal(&bias_before), "{dir}: final_logits_bias is a buffer, not trained");
        common::assert_updated_like(updated, &file, Some(1e-3));
    }
}

#[test]
fn what_tchlab_saves_transformers_loads_with_the_same_logits_and_generation_config() {
    let generation_config_is_kept = r#"
from transformers import GenerationConfig
saved, original = GenerationConfig.from_pretrained(d), GenerationConfig.from_pretrained(open(d + "/fixture.txt").read())
assert saved.to_diff_dict() == original.to_diff_dict(), f"{saved.to_diff_dict()} vs {original.to_diff_dict()}"
"#;
    for (dir, start) in [("bart", 2), ("marian", 95)] {
        seq2seq::transformers_reads_back_what_is_saved(dir, "model.decoder.layers.0.encoder_attn.q_proj.weight", start, generation_config_is_kept);
    }
}
