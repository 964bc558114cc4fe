//! What tchlab saves, `transformers` reads: a GPT-2 and a BERT classifier saved with
//! `save_hf` load with `from_pretrained` and give the same outputs.

mod common;

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};
use tchlab::checkpoint;
use tchlab::formats::safetensors;
use tchlab::models::bert::BertConfig;
use tchlab::models::{ForwardOptions, Model, Task};

#[test]
fn saved_gpt_loads_in_transformers_with_the_same_logits() {
    let dir = common::scratch("save-gpt");
    let loaded = checkpoint::load(common::fixtures().join("gpt-b"), Device::Cpu).unwrap();
    let gpt = common::Lm(&loaded.model);
    // Change the weights, so the test shows that what we hold is what we save.
    let _ = tch::no_grad(|| loaded.model.vars.variables()["transformer.h.0.attn.c_attn.weight"].shallow_clone().g_mul_scalar_(1.5));
    checkpoint::save_hf(&loaded.model, None, &dir).unwrap();
    let ids = Tensor::from_slice(&[5i64, 17, 3, 99, 120, 7]).unsqueeze(0);
    let logits = tch::no_grad(|| gpt.forward(&ids, &ForwardOptions::default(), None).unwrap().logits);
    safetensors::write(&dir.join("ours.safetensors"), &[("ids".into(), ids), ("logits".into(), logits)], &BTreeMap::new()).unwrap();
    common::python_agrees(
        r#"
import sys, torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel
d = sys.argv[1]
ours = load_file(d + "/ours.safetensors")
model = GPT2LMHeadModel.from_pretrained(d).eval()
with torch.no_grad():
    theirs = model(ours["ids"]).logits
diff = (theirs - ours["logits"]).abs().max().item()
assert diff < 1e-4, f"max difference {diff}"
"#,
        &dir,
    );
}

#[test]
fn saved_bert_classifier_loads_in_transformers_with_the_same_logits() {
    let dir = common::scratch("save-bert");
    tch::manual_seed(5);
    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 50, "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 40, "max_position_embeddings": 16
    }))
    .unwrap();
    let model = Model::new(config, Task::Classification { classes: 3 }, Device::Cpu).unwrap();
    checkpoint::save_hf(&model, None, &dir).unwrap();
    let ids = Tensor::from_slice(&[2i64, 9, 33, 4, 0, 0]).view([2, 3]);
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 0, 0]).view([2, 3]);
    let logits = tch::no_grad(|| model.forward(&ids, Some(&mask), &ForwardOptions::default(), None).unwrap().logits.unwrap());
    assert_eq!(logits.size(), vec![2, 3]);
    let tensors = [("ids".into(), ids), ("mask".into(), mask), ("logits".into(), logits.to_kind(Kind::Float))];
    safetensors::write(&dir.join("ours.safetensors"), &tensors, &BTreeMap::new()).unwrap();
    common::python_agrees(
        r#"
import sys, torch
from safetensors.torch import load_file
from transformers import BertForSequenceClassification
d = sys.argv[1]
ours = load_file(d + "/ours.safetensors")
model = BertForSequenceClassification.from_pretrained(d).eval()
with torch.no_grad():
    theirs = model(input_ids=ours["ids"], attention_mask=ours["mask"]).logits
diff = (theirs - ours["logits"]).abs().max().item()
assert diff < 1e-4, f"max difference {diff}"
"#,
        &dir,
    );
    // And tchlab reads its own save back, with the head.
    let back = checkpoint::load(&dir, Device::Cpu).unwrap();
    assert_eq!(back.model.task(), Task::Classification { classes: 3 });
}
