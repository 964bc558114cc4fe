//! Checks every encoder–decoder family passes against its fixture (made by
//! `make_fixtures.py` with `reference.safetensors` holding transformers' outputs): the
//! encoder's output, logits over a padded batch, the three kinds of attention map, and
//! the cache against the whole target.

use tch::{Device, Tensor};
use tchlab::checkpoint;
use tchlab::models::hooks::{Hooks, Names};
use tchlab::models::layers::Source;
use tchlab::models::{ForwardOptions, KvCache, Model};

use super::{assert_close, fixture_tensor, fixtures};

/// The decoder's logits for `target` over the encoded `source`, with a cache the
/// caller may continue.
pub fn decode(model: &Model, hidden: &Tensor, mask: Option<&Tensor>, target: &Tensor, opts: &ForwardOptions) -> (Tensor, KvCache) {
    let mut cache = KvCache::for_source(Source { hidden: hidden.shallow_clone(), mask: mask.map(Tensor::shallow_clone) });
    let logits = tch::no_grad(|| model.forward(target, None, opts, Some(&mut cache)).unwrap().logits.unwrap());
    (logits, cache)
}

/// The fixture `dir`'s encoder output and logits (1e-4), its decoder's self-attention as
/// captured maps, and the encoder's and the cross-attention's through their
/// TransformerLens hook names, against transformers'; `encoder_blocks` maps expected.
pub fn outputs_and_attention_match(dir: &str, encoder_blocks: usize) {
    let path = fixtures().join(dir);
    let loaded = checkpoint::load(&path, Device::Cpu).unwrap();
    assert!(loaded.report.missing.is_empty() && loaded.report.unexpected.is_empty(), "{dir}: {:?}", loaded.report);
    let model = &loaded.model;
    let reference = path.join("reference.safetensors");
    let (source, mask, target) = (fixture_tensor(&reference, "source"), fixture_tensor(&reference, "source_mask"), fixture_tensor(&reference, "target"));
    let hidden = tch::no_grad(|| model.encode(&source, Some(&mask), &ForwardOptions::default()).unwrap());
    assert_close(&hidden, &fixture_tensor(&reference, "encoder_hidden"), 1e-4, &format!("{dir} encoder output"));
    let (logits, _) = decode(model, &hidden, Some(&mask), &target, &ForwardOptions::default());
    assert_close(&logits, &fixture_tensor(&reference, "logits"), 1e-4, &format!("{dir} logits"));

    let hooks = Hooks::new().cache(Names::parse("encoder.*.attn.hook_pattern,decoder.*.cross_attn.hook_pattern").unwrap(), 1 << 30);
    let opts = ForwardOptions { capture_attention: true, hooks: Some(&hooks), ..Default::default() };
    let hidden = tch::no_grad(|| model.encode(&source, Some(&mask), &opts).unwrap());
    let mut cache = KvCache::for_source(Source { hidden, mask: Some(mask.shallow_clone()) });
    let out = tch::no_grad(|| model.forward(&target, None, &opts, Some(&mut cache)).unwrap());
    let decoder_maps = out.attentions.unwrap();
    let collected = hooks.finish().unwrap();
    let cached = |name: &str| collected.cache.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{dir}: no {name} in the hook cache")).1.shallow_clone();
    assert_eq!(collected.cache.iter().filter(|(n, _)| n.starts_with("encoder.")).count(), encoder_blocks, "{dir}: one encoder map per block");
    for (layer, probs) in decoder_maps.iter().enumerate() {
        assert_close(probs, &fixture_tensor(&reference, &format!("decoder_attention.{layer}")), 1e-4, &format!("{dir} decoder attention {layer}"));
        let want = fixture_tensor(&reference, &format!("cross_attention.{layer}"));
        assert_close(&cached(&format!("decoder.{layer}.cross_attn.hook_pattern")), &want, 1e-4, &format!("{dir} cross attention {layer}"));
    }
    for layer in 0..encoder_blocks {
        let want = fixture_tensor(&reference, &format!("encoder_attention.{layer}"));
        assert_close(&cached(&format!("encoder.{layer}.attn.hook_pattern")), &want, 1e-4, &format!("{dir} encoder attention {layer}"));
    }
}

/// Decoding the fixture's target in three pieces through the cache (ten tokens, one,
/// the rest) gives the logits of decoding it whole.
pub fn the_cache_gives_the_whole_targets_logits(dir: &str) {
    let loaded = checkpoint::load(fixtures().join(dir), Device::Cpu).unwrap();
    let reference = fixtures().join(dir).join("reference.safetensors");
    let (source, target) = (fixture_tensor(&reference, "source").narrow(0, 0, 2), fixture_tensor(&reference, "target").narrow(0, 0, 2));
    let opts = ForwardOptions::default();
    let hidden = tch::no_grad(|| loaded.model.encode(&source, None, &opts).unwrap());
    let (whole, _) = decode(&loaded.model, &hidden, None, &target, &opts);
    let (first, mut cache) = decode(&loaded.model, &hidden, None, &target.narrow(1, 0, 10), &opts);
    let mut rest = |ids: Tensor| tch::no_grad(|| loaded.model.forward(&ids, None, &opts, Some(&mut cache)).unwrap().logits.unwrap());
    let (one, last) = (rest(target.narrow(1, 10, 1)), rest(target.narrow(1, 11, 11)));
    assert_close(&Tensor::cat(&[first, one, last], 1), &whole, 1e-4, &format!("{dir}: cached vs whole"));
}

/// The fixture `dir` with `var` changed, saved by tchlab, gives transformers the logits
/// it gives tchlab (1e-4) for a target starting from `start`; `more` is Python run after
/// that check, with `d` the saved directory and `model` transformers' reading of it.
pub fn transformers_reads_back_what_is_saved(dir: &str, var: &str, start: i64, more: &str) {
    let loaded = checkpoint::load(fixtures().join(dir), Device::Cpu).unwrap();
    let _ = tch::no_grad(|| loaded.model.vars.variables()[var].shallow_clone().g_mul_scalar_(1.5));
    let out = super::scratch(&format!("save-{dir}"));
    checkpoint::save_hf(&loaded.model, None, &out).unwrap();
    let (source, target) = (Tensor::from_slice(&[5i64, 17, 3, 90, 12, 7, 4]).unsqueeze(0), Tensor::from_slice(&[start, 9, 44, 3]).unsqueeze(0));
    let hidden = tch::no_grad(|| loaded.model.encode(&source, None, &ForwardOptions::default()).unwrap());
    let (logits, _) = decode(&loaded.model, &hidden, None, &target, &ForwardOptions::default());
    let tensors = [("source".into(), source), ("target".into(), target), ("logits".into(), logits)];
    tchlab::formats::safetensors::write(&out.join("ours.safetensors"), &tensors, &Default::default()).unwrap();
    std::fs::write(out.join("fixture.txt"), fixtures().join(dir).display().to_string()).unwrap();
    let script = format!(
        r#"
import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM
d = sys.argv[1]
ours = load_file(d + "/ours.safetensors")
model = AutoModelForSeq2SeqLM.from_pretrained(d).eval()
with torch.no_grad():
    theirs = model(input_ids=ours["source"], decoder_input_ids=ours["target"]).logits
diff = (theirs - ours["logits"]).abs().max().item()
assert diff < 1e-4, f"max difference {{diff}}"
{more}
"#
    );
    super::python_agrees(&script, &out);
}
