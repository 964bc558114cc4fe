//! Fine-tuning through the session: LoRA adapters on a model being trained (the
//! timeline, exact resume and every analysis see them; dropping them gives back the
//! base bit for bit), peft's files in and out, and instruction tuning on conversations —
//! with SmolLM2 loaded and no `%set`, the data, a step and an evaluation work.

mod common;

use common::{fail, ok, run, serial};
use serde_json::Value;
use tchlab::session::Session;

fn reverse_session() -> Session {
    let mut s = Session::new();
    ok(&mut s, "%device cpu\n%seed 0\n%data synth reverse --length 5\n%model gpt --layers 2 --heads 2 --dim 32\n%set lr=3e-3 batch=16");
    s
}

fn checksum(s: &mut Session) -> Value {
    ok(s, "%status --checksum")["weights_checksum"].clone()
}

fn losses(s: &mut Session, n: usize) -> Vec<f64> {
    (0..n).map(|_| ok(s, "%step")["loss"].as_f64().unwrap()).collect()
}

#[test]
fn lora_trains_only_its_adapters_and_the_timeline_and_resume_are_exact() {
    let _serial = serial();
    let dir = common::scratch("finetune-lora");
    let mut s = reverse_session();
    ok(&mut s, "%step 5");
    ok(&mut s, "%snapshot base");
    let before = checksum(&mut s);
    let listed = ok(&mut s, "%lora");
    assert_eq!(listed["action"], "listed");
    assert!(listed["layers"].as_array().unwrap().is_empty());

    let added = ok(&mut s, "%lora r=4 alpha=8 targets=all-linear");
    assert_eq!(added["action"], "added");
    assert_eq!(added["layers"].as_array().unwrap().len(), 2 * 4, "c_attn, c_proj, c_fc and mlp.c_proj in each block");
    let trainable = added["trainable"].as_i64().unwrap();
    assert_eq!(trainable, added["layers"].as_array().unwrap().iter().map(|l| l["parameters"].as_i64().unwrap()).sum::<i64>());
    assert!(added["share"].as_f64().unwrap() < 0.2 && added["optimizer_bytes"].as_i64().unwrap() == 12 * trainable);
    assert_eq!(checksum(&mut s), checksum(&mut s));

    ok(&mut s, "%snapshot adapters");
    let first = losses(&mut s, 3);
    ok(&mut s, "%rewind adapters");
    assert_eq!(losses(&mut s, 3), first, "rewind under LoRA replays bit for bit");
    ok(&mut s, "%fork slow --from adapters lr=1e-3");
    let slow = losses(&mut s, 3);
    assert_ne!(slow, first);
    ok(&mut s, &format!("%save {}", dir.join("run").display()));
    let continued = losses(&mut s, 2);
    let mut resumed = Session::new();
    assert_eq!(ok(&mut resumed, &format!("%device cpu\n%load {}", dir.join("run").display()))["resumed_step"], 8);
    assert_eq!(ok(&mut resumed, "%lora")["layers"].as_array().unwrap().len(), 8, "the adapters come back with the checkpoint");
    assert_eq!(losses(&mut resumed, 2), continued, "a checkpoint taken under LoRA resumes bit for bit");

    let off = ok(&mut s, "%lora off");
    assert_eq!(off["enabled"], false);
    let e = fail(&mut s, "%step");
    assert!(e.message.contains("%lora on"), "{e}");
    ok(&mut s, "%lora on");
    ok(&mut s, "%attention \"01234=\" --layer 0 --head 0");
    ok(&mut s, "%logit-lens \"01234=\"");
    ok(&mut s, "%generate \"01234=\" --max-tokens 4");
    ok(&mut s, &format!("%save {} --adapter", dir.join("adapter").display()));
    let e = fail(&mut s, &format!("%save {} --hf", dir.join("hf").display()));
    assert!(e.message.contains("%lora merge"), "{e}");

    // The timeline carries the adapters: a full fine-tuning step tried and undone, and
    // the adapters back as they were.
    let trained_adapters = ok(&mut s, "%status --checksum")["weights_checksum"].clone();
    ok(&mut s, "%snapshot with-adapters");
    ok(&mut s, "%lora drop\n%snapshot dropped");
    ok(&mut s, "%step");
    let e = fail(&mut s, "%rewind with-adapters");
    assert!(e.message.contains("weights under them changed"), "{e}");
    ok(&mut s, "%rewind dropped\n%rewind with-adapters");
    assert_eq!(checksum(&mut s), trained_adapters, "the adapters come back onto the base they were trained on");
    ok(&mut s, "%rewind base");
    assert_eq!(ok(&mut s, "%lora")["layers"].as_array().unwrap().len(), 0, "a snapshot from before %lora has no adapters");
    assert_eq!(checksum(&mut s), before);
    ok(&mut s, "%rewind with-adapters");

    let dropped = ok(&mut s, "%lora drop");
    assert_eq!(dropped["action"], "dropped");
    assert_eq!(checksum(&mut s), before, "dropping the adapters after training leaves the base as it was before %lora");
    ok(&mut s, &format!("%load {}", dir.join("adapter").display()));
    assert_eq!(ok(&mut s, "%lora")["layers"].as_array().unwrap().len(), 8, "the saved adapter loads back onto the same base");
    let merged = ok(&mut s, "%lora merge");
    assert_eq!((merged["action"].as_str(), merged["enabled"].as_bool()), (Some("merged"), Some(false)));
    assert_ne!(checksum(&mut s), before, "merged adapters change the weights");
    ok(&mut s, &format!("%save {} --hf", dir.join("hf").display()));
}

/// Gradient checkpointing recomputes each block in the backward pass with the random
/// generators put back, so its steps are the plain pass's bit for bit — with dropout in
/// the blocks and in LoRA adapters, in every family; and the setting is kept by a
/// checkpoint.
#[test]
fn gradient_checkpointing_takes_the_same_steps_as_the_plain_pass() {
    let _serial = serial();
    let dir = common::scratch("finetune-checkpointing");
    let rows: String = (0..32).map(|i| format!("{}{},{}\n", ["ab", "ba"][i % 2], "c".repeat(i % 5), ["yes", "no"][i % 2])).collect();
    std::fs::write(dir.join("labels.csv"), format!("text,label\n{rows}")).unwrap();
    let setups = [
        "%data synth reverse --length 5\n%model gpt --layers 2 --heads 2 --dim 32 --dropout 0.1".to_string(),
        "%data synth reverse --length 5\n%model llama --layers 3 --heads 2 --kv-heads 1 --dim 32 --dropout 0.1".to_string(),
        format!(
            "%tokenizer char {0}\n%model bert --layers 2 --heads 2 --dim 32 --dropout 0.1 --classes 2\n%data classify {0} --val 0.25",
            dir.join("labels.csv").display()
        ),
    ];
    for setup in &setups {
        for adapters in ["", "%lora r=4 dropout=0.1 targets=all-linear"] {
            let steps = |checkpointing: bool| {
                let mut s = Session::new();
                ok(&mut s, &format!("%device cpu\n%seed 0\n{setup}\n%set lr=3e-3 batch=8 checkpointing={checkpointing}"));
                if !adapters.is_empty() {
                    ok(&mut s, adapters);
                }
                (losses(&mut s, 3), checksum(&mut s))
            };
            let plain = steps(false);
            assert!(plain.0.iter().all(|l| l.is_finite()), "{setup}: {plain:?}");
            assert_eq!(steps(true), plain, "{setup} {adapters}: the checkpointed steps differ from the plain ones");
        }
    }

    let mut s = reverse_session();
    ok(&mut s, "%set checkpointing=true\n%step 2");
    assert_eq!(ok(&mut s, "%hparams")["checkpointing"], true);
    ok(&mut s, &format!("%save {}", dir.join("run").display()));
    let continued = losses(&mut s, 2);
    let mut resumed = Session::new();
    ok(&mut resumed, &format!("%device cpu\n%load {}", dir.join("run").display()));
    assert_eq!(ok(&mut resumed, "%hparams")["checkpointing"], true, "the checkpoint keeps the setting");
    assert_eq!(losses(&mut resumed, 2), continued, "a checkpointed run resumes bit for bit");
}

#[test]
fn lora_settings_set_fork_and_sweep_and_the_session_comes_back() {
    let _serial = serial();
    let mut s = reverse_session();
    ok(&mut s, "%lora r=2 targets=c_attn");
    let before = checksum(&mut s);
    let set = ok(&mut s, "%set lora_alpha=4 lora_dropout=0");
    assert!(set.is_object(), "{set}");
    let listed = ok(&mut s, "%lora");
    assert_eq!((listed["settings"]["alpha"].as_f64(), listed["layers"][0]["scaling"].as_f64()), (Some(4.0), Some(2.0)), "alpha changes the scale in place");
    assert_eq!(checksum(&mut s), before, "and no weight");
    ok(&mut s, "%set lora_r=4");
    let listed = ok(&mut s, "%lora");
    assert_eq!(listed["layers"][0]["r"], 4, "a new rank makes new adapters");
    ok(&mut s, "%fork bigger lora_r=8");
    assert_eq!(ok(&mut s, "%lora")["layers"][0]["r"], 8);
    let swept = ok(&mut s, "%sweep lora_r=[2,6] lr=[3e-3] --steps 3");
    assert_eq!(swept["trials"].as_array().unwrap().len(), 2, "{swept}");
    assert_eq!(ok(&mut s, "%lora")["layers"][0]["r"], 8, "the sweep puts the session's adapters back");
    ok(&mut s, "%set lora_r=0");
    assert!(ok(&mut s, "%lora")["layers"].as_array().unwrap().is_empty(), "lora_r=0 drops them");
    let e = fail(&mut s, "%set lora_r=-1");
    assert!(e.message.contains("lora_r=-1"), "{e}");
    let e = fail(&mut s, "%set lora_alpha=nan");
    assert!(e.message.contains("lora_alpha"), "{e}");
}

#[test]
fn lora_refuses_what_it_cannot_do_and_changes_nothing() {
    let _serial = serial();
    let mut empty = Session::new();
    assert!(fail(&mut empty, "%lora r=8").message.contains("no model"));
    let mut s = reverse_session();
    let before = checksum(&mut s);
    for (cell, says) in [
        ("%lora r=0", "r must be"),
        ("%lora r=-3", "r must be"),
        ("%lora r=2.5", "whole number"),
        ("%lora alpha=-1", "alpha must be"),
        ("%lora alpha=nan", "alpha must be"),
        ("%lora alpha=inf", "alpha must be"),
        ("%lora dropout=1", "dropout must be"),
        ("%lora dropout=-0.1", "dropout must be"),
        ("%lora targets=q_proj", "matches no linear layer"),
        ("%lora targets=(((a", "regular expression"),
        ("%lora rank=4", "is not one"),
        ("%lora merge", "no LoRA adapters"),
        ("%lora drop", "no LoRA adapters"),
        ("%lora off", "no LoRA adapters"),
        ("%lora merge r=4", "takes no settings"),
        ("%lora r=100000", "r must be"),
    ] {
        let e = fail(&mut s, cell);
        assert!(e.message.contains(says), "{cell}: {e}");
        assert_eq!(checksum(&mut s), before, "{cell} changed nothing");
    }
    ok(&mut s, "%lora r=2");
    let e = fail(&mut s, "%lora r=4");
    assert!(e.message.contains("adapters already") && e.message.contains("%lora drop"), "{e}");
}

/// A session with SmolLM2 loaded by name, from a models directory of its own.
fn smollm2(dir: &std::path::Path) -> Session {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("smollm2.json")).unwrap()).unwrap();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::os::unix::fs::symlink(reference["file"].as_str().unwrap(), dir.join("models").join("SmolLM2-135M-Instruct")).unwrap();
    std::env::set_var("TCHLAB_MODELS", dir.join("models"));
    let mut s = Session::new();
    ok(&mut s, "%device cpu\n%load SmolLM2-135M-Instruct");
    s
}

#[test]
fn smollm2_takes_text_and_conversations_with_no_settings() {
    let _serial = serial();
    let dir = common::scratch("finetune-smollm2");
    let mut s = smollm2(&dir);
    std::fs::write(dir.join("notes.txt"), "The lighthouse of Varnholm is painted green. It was built in 1873 by the fishermen of the island.\n".repeat(3))
        .unwrap();
    let data = ok(&mut s, &format!("%data text {}", dir.join("notes.txt").display()));
    assert!(data["train"].as_u64().unwrap() > 10, "{data}");
    let hp = ok(&mut s, "%hparams");
    assert!(hp["sizing"]["window"].as_u64().unwrap() <= 512 && hp["sizing"]["window_why"].as_str().unwrap().contains("ctx=0"), "{hp}");
    assert!(ok(&mut s, "%eval")["loss"].as_f64().unwrap().is_finite());
    ok(&mut s, "%lora r=4");
    assert!(ok(&mut s, "%step")["loss"].as_f64().unwrap().is_finite());

    let conversations = [
        r#"{"messages": [{"role": "user", "content": "What colour is the lighthouse of Varnholm?"}, {"role": "assistant", "content": "Green."}]}"#,
        r#"{"messages": [{"role": "user", "content": "Who built it?"}, {"role": "assistant", "content": "The fishermen of the island, in 1873."}]}"#,
        r#"{"prompt": "Varnholm's lighthouse is", "completion": " green."}"#,
    ];
    std::fs::write(dir.join("chat.jsonl"), conversations.join("\n")).unwrap();
    let (outputs, result) = run(&mut s, &format!("%data chat {} --val 0.34", dir.join("chat.jsonl").display()));
    result.unwrap();
    let ready = common::result_json(&outputs);
    assert_eq!((ready["kind"].as_str(), ready["train"].as_u64(), ready["val"].as_u64()), (Some("chat"), Some(2), Some(1)));
    assert!(ready["example"].as_str().unwrap().contains("⟦"), "{ready}");
    let bundle = outputs.iter().find_map(|o| if let tchlab::session::output::Output::Result(b) = o { Some(b.clone()) } else { None }).unwrap();
    assert!(bundle.0["text/html"].as_str().unwrap().contains("<mark"), "the notebook highlights what carries loss");
    assert!(bundle.ansi_text().unwrap().contains("\x1b[1;30;42m"), "the terminal colours it");
    let eval = ok(&mut s, "%eval");
    assert!(eval["loss"].as_f64().unwrap().is_finite() && eval["perplexity"].as_f64().unwrap() > 1.0);
    assert!(ok(&mut s, "%step")["loss"].as_f64().unwrap().is_finite());
}
