//! The trainer: exact resume, the NaN guard, rewind and fork, interruption,
//! determinism, hyperparameter changes, evaluation, precision, data sets.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tch::{Device, Kind, Tensor};
use tchlab::data::DataSpec;
use tchlab::models::bert::BertConfig;
use tchlab::models::gpt::GptConfig;
use tchlab::models::Model;
use tchlab::tokenize::Tokenizer;
use tchlab::train::{HParams, Halt, Precision, Stop, Trainer};
use tchlab::Error;

/// libtorch's generator is one per process, and the trainer re-seeds it every step:
/// runs that must be reproducible cannot train on two threads at once. Every test here
/// holds this lock, as a front end runs one command at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn reverse_spec() -> DataSpec {
    DataSpec::Synth { task: "reverse".into(), length: 5, symbols: 8, seq2seq: false }
}

/// A tiny GPT on the reverse task, with dropout so that RNG state matters.
fn gpt_trainer(seed: u64, hp: HParams) -> Trainer {
    tch::manual_seed(seed as i64);
    let tokenizer = tchlab::data::synth::Synth::new(tchlab::data::synth::Task::Reverse, 5, 8).unwrap().tokenizer();
    let config = GptConfig { resid_pdrop: 0.1, attn_pdrop: 0.1, embd_pdrop: 0.1, n_embd: 32, ..GptConfig::tiny(tokenizer.vocab_size() as i64, 16) };
    let model = Model::new(config.clone(), tchlab::models::Task::LanguageModel, Device::Cpu).unwrap();
    Trainer::new(model, tokenizer, reverse_spec(), hp, seed).unwrap()
}

fn small_hp() -> HParams {
    HParams { lr: 3e-3, batch: 16, accum: 2, warmup: 3, schedule: tchlab::train::Schedule::Cosine, steps: 40, ..Default::default() }
}

fn losses(t: &mut Trainer, n: u64) -> Vec<f64> {
    let mut out = vec![];
    let report = t.train(Stop::Steps(n), &mut |s, _| out.push(s.loss)).unwrap();
    assert_eq!(report.halted, None);
    out
}

fn weights(t: &Trainer) -> Vec<(String, Tensor)> {
    t.model().named_tensors().into_iter().map(|(n, w)| (n, w.detach().copy())).collect()
}

fn assert_same_weights(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(b) {
        assert!(x.equal(y), "{name} differs");
    }
}

#[test]
fn resuming_from_a_checkpoint_gives_bit_identical_losses() {
    let _serial = serial();
    for precision in ["f32", "bf16"] {
        let dir = common::scratch(&format!("resume-{precision}"));
        let mut a = gpt_trainer(7, small_hp());
        a.set("precision", precision).unwrap();
        losses(&mut a, 8);
        a.save(dir.join("ckpt")).unwrap();
        let continued = losses(&mut a, 6);

        let mut b = Trainer::load(dir.join("ckpt"), Device::Cpu).unwrap();
        assert_eq!(b.step_count(), 8);
        assert_eq!(b.hparams(), a.hparams());
        assert_eq!(b.history().steps.len(), 8);
        let resumed = losses(&mut b, 6);
        assert_eq!(continued, resumed, "{precision}: losses after resuming differ");
        assert_same_weights(&weights(&a), &weights(&b));
        assert_eq!(a.history().steps.iter().map(|s| s.loss).collect::<Vec<_>>(), b.history().steps.iter().map(|s| s.loss).collect::<Vec<_>>());
    }
}

#[test]
fn saving_over_a_checkpoint_replaces_it_whole() {
    let _serial = serial();
    let dir = common::scratch("resave");
    let mut t = gpt_trainer(1, small_hp());
    losses(&mut t, 2);
    t.save(dir.join("ckpt")).unwrap();
    losses(&mut t, 3);
    t.save(dir.join("ckpt")).unwrap();
    assert_eq!(Trainer::load(dir.join("ckpt"), Device::Cpu).unwrap().step_count(), 5);
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("ckpt")], "no staging directory is left behind");
    let err = Trainer::load(dir.join("missing"), Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("missing/trainer.json"), "{err}");
}

#[test]
fn the_same_seed_gives_the_same_run_and_another_seed_another() {
    let _serial = serial();
    let a = losses(&mut gpt_trainer(3, small_hp()), 5);
    let b = losses(&mut gpt_trainer(3, small_hp()), 5);
    let c = losses(&mut gpt_trainer(4, small_hp()), 5);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn a_nan_loss_stops_the_step_and_changes_nothing() {
    let _serial = serial();
    let mut t = gpt_trainer(5, HParams { lr: 1e30, clip: 0.0, ..small_hp() });
    t.snapshot("start").unwrap();
    // One step at this learning rate sends the weights to ~1e30; the next forward overflows.
    let first = t.step();
    let before = weights(&t);
    let steps_before = t.step_count();
    let err = match (first, t.step()) {
        (Err(e), _) | (Ok(_), Err(e)) => e,
        (Ok(_), Ok(_)) => panic!("two steps at lr=1e30 should not both succeed"),
    };
    match &err {
        Error::NonFinite(message) => assert!(message.contains("loss") && message.contains("weights are unchanged"), "{message}"),
        other => panic!("expected a non-finite error, got {other}"),
    }
    assert_eq!(t.step_count(), steps_before);
    assert_eq!(t.history().steps.len() as i64, steps_before);
    let after = weights(&t);
    for ((name, x), (_, y)) in before.iter().zip(&after) {
        // Compare bit patterns: the weights may hold huge values, and NaN != NaN.
        assert!(x.view_dtype(Kind::Int).equal(&y.view_dtype(Kind::Int)), "{name} changed");
    }
    // The guard inside train() reports the same and keeps the steps taken.
    let report = t.train(Stop::Steps(5), &mut |_, _| {}).unwrap();
    assert!(matches!(report.halted, Some(Halt::NonFinite(_))));
    // Recover: rewind and lower the learning rate.
    t.rewind("start").unwrap();
    t.set("lr", "1e-3").unwrap();
    assert!(t.step().unwrap().loss.is_finite());
}

#[test]
fn a_non_finite_gradient_is_named() {
    let _serial = serial();
    let t = gpt_trainer(5, small_hp());
    let mut opt = tchlab::train::optim::Optimizer::new(&t.model().vars, tchlab::train::optim::Method::adamw(), 1e-3, 0.0).unwrap();
    let x = Tensor::from_slice(&[1i64, 2, 3]).unsqueeze(0);
    let gpt = common::Lm(t.model());
    gpt.forward(&x, &Default::default(), None).unwrap().logits.sum(Kind::Float).backward();
    assert!(opt.grad_norm().is_finite());
    let wpe = opt.params.iter().find(|p| p.name == "transformer.wpe.weight").unwrap().var.grad();
    let _ = tch::no_grad(|| wpe.get(0).shallow_clone().fill_(f64::NAN));
    assert!(opt.grad_norm().is_nan());
    assert_eq!(opt.non_finite_grads(), vec!["transformer.wpe.weight".to_string()]);
    opt.zero_grad();
}

#[test]
fn rewind_replays_exactly_and_fork_keeps_both_branches() {
    let _serial = serial();
    let mut t = gpt_trainer(11, small_hp());
    losses(&mut t, 5);
    t.snapshot("five").unwrap();
    let at_five = weights(&t);
    let first_time = losses(&mut t, 5);
    assert_eq!(t.step_count(), 10);

    t.rewind("five").unwrap();
    assert_eq!(t.step_count(), 5);
    assert_eq!(t.history().steps.len(), 5);
    assert_same_weights(&weights(&t), &at_five);
    assert_eq!(losses(&mut t, 5), first_time, "a rewound run replays exactly");

    t.rewind("5").unwrap(); // by step number
    assert_eq!(t.step_count(), 5);
    losses(&mut t, 5);
    t.fork("high-lr", Some("five"), &[("lr".into(), "1e-2".into())]).unwrap();
    assert_eq!(t.branch(), "high-lr");
    assert_eq!(t.step_count(), 5);
    assert_eq!(t.hparams().lr, 1e-2);
    assert_eq!(t.history().changes.last().unwrap().key, "lr");
    let forked = losses(&mut t, 3);
    assert_ne!(forked, first_time[..3].to_vec());
    let runs = t.runs();
    assert_eq!(runs.iter().map(|(n, h)| (*n, h.steps.len())).collect::<Vec<_>>(), vec![("main", 10), ("high-lr", 8)]);

    let err = t.fork("main", None, &[]).unwrap_err().to_string();
    assert!(err.contains("exists already"), "{err}");
    let err = t.fork("x", None, &[("lr".into(), "fast".into())]).unwrap_err().to_string();
    assert!(err.contains("lr=fast"), "{err}");
    assert_eq!(t.branch(), "high-lr", "a failed fork changes nothing");
    let err = t.rewind("nowhere").unwrap_err().to_string();
    assert!(err.contains("five (step 5, main)"), "{err}");
}

#[test]
fn automatic_snapshots_stay_within_their_budget() {
    let _serial = serial();
    let mut t = gpt_trainer(2, HParams { snapshot_every: 2, ..small_hp() });
    losses(&mut t, 4);
    let one = t.timeline().snapshots()[0].bytes();
    assert_eq!(t.timeline().snapshots().len(), 2);
    t.set("snapshot_budget_mb", "1").unwrap();
    let keep = (1usize << 20) / one;
    assert!((1..22).contains(&keep), "the 1 MiB budget must bite: one snapshot is {one} bytes");
    losses(&mut t, 40);
    let autos = t.timeline().snapshots().iter().filter(|s| s.auto).count();
    assert_eq!(autos, keep.min(22), "oldest automatic snapshots are dropped");
    assert_eq!(t.timeline().snapshots().last().unwrap().step, 44);
}

#[test]
fn a_cancel_request_stops_training_at_a_step_boundary() {
    let _serial = serial();
    let mut t = gpt_trainer(9, small_hp());
    let cancel = t.cancel_handle();
    // Another thread asks once a few steps are done, however slow the machine is.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = done.clone();
    let stopper = std::thread::spawn(move || {
        while seen.load(Ordering::SeqCst) < 3 {
            std::thread::sleep(Duration::from_millis(5));
        }
        cancel.store(true, Ordering::SeqCst);
    });
    let report = t
        .train(Stop::Steps(1_000_000), &mut |_, _| {
            done.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    stopper.join().unwrap();
    assert_eq!(report.halted, Some(Halt::Interrupted));
    assert!(report.steps > 0 && report.steps < 1_000_000);
    assert_eq!(t.step_count() as u64, report.steps);
    assert_eq!(t.history().steps.len() as u64, report.steps);
    // Between micro-batches: nothing of the step happens.
    let before = weights(&t);
    t.cancel_handle().store(true, Ordering::SeqCst);
    let err = t.step().unwrap_err();
    assert!(matches!(err, Error::Interrupted { step } if step == report.steps as i64), "{err}");
    assert_same_weights(&before, &weights(&t));
    assert!(t.step().is_err(), "the flag stays set until whoever set it clears it");
    t.cancel_handle().store(false, Ordering::SeqCst);
    // Inside a step, where the data's tokenizer sees the interrupt first (the front end's
    // flag is set between the step's check and the batch): the same boundary, the same
    // error, the data cursor put back so the next step draws what it would have drawn.
    let (before, at) = (weights(&t), t.step_count());
    let mut twin = gpt_trainer(9, small_hp());
    twin.train(Stop::Steps(at as u64), &mut |_, _| {}).unwrap();
    let raised = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let scope = tchlab::interrupt::Scope::enter(&raised);
    let err = t.step().unwrap_err();
    drop(scope);
    assert!(matches!(err, Error::Interrupted { step } if step == at), "{err}");
    assert_same_weights(&before, &weights(&t));
    assert_eq!(t.step().unwrap().loss, twin.step().unwrap().loss);
    assert_same_weights(&weights(&twin), &weights(&t));
    let report = t.train(Stop::Steps(1), &mut |_, _| {}).unwrap();
    assert_eq!((report.steps, report.halted), (1, None));
}

#[test]
fn hyperparameter_changes_are_recorded_and_used() {
    let _serial = serial();
    let mut t = gpt_trainer(1, HParams { warmup: 0, schedule: tchlab::train::Schedule::Constant, ..small_hp() });
    losses(&mut t, 2);
    t.set("lr", "5e-4").unwrap();
    t.set("batch", "8").unwrap();
    assert!(t.set("batch", "none").is_err());
    let step = t.step().unwrap();
    assert_eq!(step.lr, 5e-4);
    let changes = &t.history().changes;
    assert_eq!(changes.len(), 2);
    assert_eq!((changes[0].step, changes[0].key.as_str(), changes[0].from.as_str(), changes[0].to.as_str()), (2, "lr", "0.003", "0.0005"));
    assert_eq!(t.hparams().batch, 8);
    let dir = common::scratch("history");
    t.history().export(&dir.join("h.jsonl")).unwrap();
    t.history().export(&dir.join("h.csv")).unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("h.jsonl")).unwrap().lines().count(), 5);
    assert_eq!(std::fs::read_to_string(dir.join("h.csv")).unwrap().lines().count(), 4);
}

#[test]
fn a_language_model_trains_on_a_text_corpus_and_reports_perplexity() {
    let _serial = serial();
    let dir = common::scratch("corpus");
    let text = "the cat sat on the mat. the dog sat on the log. ".repeat(200);
    std::fs::write(dir.join("corpus.txt"), &text).unwrap();
    let tokenizer = Tokenizer::char_level(&text).unwrap();
    tch::manual_seed(0);
    let model = Model::new(GptConfig::tiny(tokenizer.vocab_size() as i64, 32), tchlab::models::Task::LanguageModel, Device::Cpu).unwrap();
    let spec = DataSpec::Text { path: dir.join("corpus.txt"), val_fraction: 0.1 };
    let mut t = Trainer::new(model, tokenizer, spec, HParams { lr: 3e-3, batch: 16, eval_every: 30, ..Default::default() }, 0).unwrap();
    let before = t.evaluate().unwrap();
    let mut last = None;
    t.train(Stop::Steps(60), &mut |s, _| last = s.val.clone()).unwrap();
    let after = last.expect("evaluated at step 60");
    assert!((after.perplexity.unwrap() - after.loss.exp()).abs() < 1e-9);
    assert!(after.loss < before.loss / 2.0, "validation loss {} -> {}", before.loss, after.loss);
    let missing = DataSpec::Text { path: dir.join("nope.txt"), val_fraction: 0.1 };
    let model = Model::new(GptConfig::tiny(20, 32), tchlab::models::Task::LanguageModel, Device::Cpu).unwrap();
    let err = Trainer::new(model, Tokenizer::char_level("abc").unwrap(), missing, HParams::default(), 0).err().unwrap().to_string();
    assert!(err.contains("nope.txt"), "{err}");
}

fn tiny_bert(classes: i64, vocab: i64) -> Model {
    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 32,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0
    }))
    .unwrap();
    Model::new(config, tchlab::models::Task::Classification { classes }, Device::Cpu).unwrap()
}

#[test]
fn a_classifier_trains_on_csv_and_jsonl_with_accuracy_f1_and_confusion() {
    let _serial = serial();
    let dir = common::scratch("classify");
    // The class is the first character, which the pooler reads.
    let mut rng = tchlab::data::Rng::new(1);
    let mut csv = String::from("text,label\n");
    let mut jsonl = String::new();
    for _ in 0..200 {
        let first = ["x", "y", "z"][rng.below(3) as usize];
        let rest: String = (0..6).map(|_| ["a", "b", "c"][rng.below(3) as usize]).collect();
        let label = match first {
            "x" => "red",
            "y" => "green",
            _ => "blue",
        };
        csv.push_str(&format!("\"{first}{rest}\",{label}\n"));
        jsonl.push_str(&format!("{{\"sentence\": \"{first}{rest}\", \"class\": \"{label}\"}}\n"));
    }
    std::fs::write(dir.join("d.csv"), csv).unwrap();
    std::fs::write(dir.join("d.jsonl"), jsonl).unwrap();
    let tokenizer = Tokenizer::char_level("abcxyz").unwrap();
    for (file, text_field, label_field) in [("d.csv", "text", "label"), ("d.jsonl", "sentence", "class")] {
        tch::manual_seed(0);
        let spec = DataSpec::Classify { path: dir.join(file), text_field: text_field.into(), label_field: label_field.into(), val_fraction: 0.25, seed: 0 };
        let mut t = Trainer::new(tiny_bert(3, 6), tokenizer.clone(), spec, HParams { lr: 2e-3, batch: 16, ..Default::default() }, 0).unwrap();
        t.train(Stop::Steps(80), &mut |_, _| {}).unwrap();
        let m = t.evaluate().unwrap();
        assert_eq!(m.labels.as_deref().unwrap(), ["blue", "green", "red"]);
        let confusion = m.confusion.unwrap();
        assert_eq!(confusion.iter().flatten().sum::<u64>(), 50, "every validation example counted once");
        assert!(m.accuracy.unwrap() > 0.9, "{file}: accuracy {:?}", m.accuracy);
        assert!(m.macro_f1.unwrap() > 0.85);
    }
    let spec = DataSpec::Classify { path: dir.join("d.csv"), text_field: "body".into(), label_field: "label".into(), val_fraction: 0.25, seed: 0 };
    let err = Trainer::new(tiny_bert(3, 6), tokenizer.clone(), spec, HParams::default(), 0).err().unwrap().to_string();
    assert!(err.contains("no column `body`") && err.contains("text, label"), "{err}");
    let spec = DataSpec::Classify { path: dir.join("d.csv"), text_field: "text".into(), label_field: "label".into(), val_fraction: 0.25, seed: 0 };
    let err = Trainer::new(tiny_bert(2, 6), tokenizer, spec, HParams::default(), 0).err().unwrap().to_string();
    assert!(err.contains("2 classes but the data has 3 labels"), "{err}");
}

#[test]
fn models_and_data_that_do_not_fit_are_refused_with_the_fix() {
    let _serial = serial();
    let tokenizer = Tokenizer::char_level("0123456789+=").unwrap();
    let small_vocab = Model::new(GptConfig::tiny(5, 16), tchlab::models::Task::LanguageModel, Device::Cpu).unwrap();
    let err = Trainer::new(small_vocab, tokenizer.clone(), reverse_spec(), HParams::default(), 0).err().unwrap().to_string();
    assert!(err.contains("--vocab 12"), "{err}");
    let short = Model::new(GptConfig::tiny(12, 4), tchlab::models::Task::LanguageModel, Device::Cpu).unwrap();
    let err = Trainer::new(short, tokenizer.clone(), reverse_spec(), HParams::default(), 0).err().unwrap().to_string();
    assert!(err.contains("--ctx 10"), "{err}");
    let err = Trainer::new(tiny_bert(2, 12), tokenizer, reverse_spec(), HParams::default(), 0).err().unwrap().to_string();
    assert!(err.contains("classification data"), "{err}");
}

#[test]
fn bf16_trains_on_the_cpu_with_float32_masters_and_f16_is_refused_there() {
    let _serial = serial();
    let reference = losses(&mut gpt_trainer(6, small_hp()), 30);
    let mut t = gpt_trainer(6, small_hp());
    t.set("precision", "bf16").unwrap();
    assert_eq!(t.model().named_tensors()[0].1.kind(), Kind::BFloat16);
    let l = losses(&mut t, 30);
    assert!(l[29] < l[0] - 0.2, "bf16 loss {} -> {}", l[0], l[29]);
    assert!((l[29] - reference[29]).abs() < 0.1, "bf16 ends at {}, f32 at {}", l[29], reference[29]);
    let err = t.set("precision", "f16").unwrap_err().to_string();
    assert!(err.contains("needs CUDA") && err.contains("bf16"), "{err}");
    assert_eq!(t.hparams().precision, Precision::Bf16);
    t.set("precision", "f32").unwrap();
    assert_eq!(t.model().named_tensors()[0].1.kind(), Kind::Float);
    assert!(t.step().unwrap().loss.is_finite());
}
