//! The session engine through its public API only: the text a notebook sends, the
//! events and JSON that come back, and state left unchanged by every failure.

mod common;

use common::{fail, ok, result_json, run, serial};

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use tchlab::session::output::{Bundle, CellError, Output};
use tchlab::session::Session;

/// Every figure's PNG decodes, at twice the size of its SVG.
fn figures(outputs: &[Output]) -> Vec<(u32, u32)> {
    let bundles: Vec<&Bundle> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Display { bundle, .. } | Output::Update { bundle, .. } | Output::Result(bundle) => Some(bundle),
            _ => None,
        })
        .collect();
    bundles
        .iter()
        .filter_map(|b| b.png())
        .map(|png| {
            let reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().expect("a PNG");
            (reader.info().width, reader.info().height)
        })
        .collect()
}

fn reverse_session() -> Session {
    let mut s = Session::new();
    ok(&mut s, "%device cpu\n%seed 0\n%data synth reverse --length 5\n%model gpt --layers 2 --heads 2 --dim 32\n%set lr=3e-3 batch=32 eval_every=20");
    s
}

#[test]
fn a_scripted_session_trains_plots_explores_and_generates() {
    let _serial = serial();
    let dir = common::scratch("session");
    let mut s = reverse_session();
    assert_eq!(ok(&mut s, "%step 3")["step"], 3);
    ok(&mut s, "%snapshot early");

    let (outputs, result) = run(&mut s, "%train 40");
    result.unwrap();
    let Output::Display { id: Some(id), .. } = &outputs[0] else { panic!("a live display first: {:?}", outputs[0]) };
    let updates: Vec<&Bundle> =
        outputs.iter().filter_map(|o| if let Output::Update { id: u, bundle } = o { (u == id).then_some(bundle) } else { None }).collect();
    assert!(!updates.is_empty(), "the display is updated");
    assert!(updates.last().unwrap().plain().contains("40/40"), "the final state stays: {}", updates.last().unwrap().plain());
    let last = result_json(&outputs);
    assert_eq!((last["step"].as_i64(), last["steps"].as_i64()), (Some(43), Some(40)));
    assert!(last["loss"].as_f64().unwrap() < 2.0);
    assert!(figures(&outputs).iter().all(|&size| size == (1600, 800)), "live loss plots at 2x");

    let (outputs, result) = run(&mut s, "%plot loss --log");
    result.unwrap();
    assert_eq!(figures(&outputs), vec![(1600, 800)]);

    let (outputs, result) = run(&mut s, "%attention \"01234=\" --layer 1 --head 0");
    result.unwrap();
    let json = result_json(&outputs);
    assert_eq!(json["tokens"].as_array().unwrap().len(), 6);
    let rows = json["attention"].as_array().unwrap();
    assert!(rows.iter().all(|r| (r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum::<f64>() - 1.0).abs() < 1e-4));
    let (w, h) = figures(&outputs)[0];
    assert!(w > 100 && h > 100 && w % 2 == 0);
    let (outputs, result) = run(&mut s, "%attention \"01234=\"");
    result.unwrap();
    let (w, h) = figures(&outputs)[0];
    assert!(w > 100 && h > 100, "a grid of 2 layers by 2 heads: {w}x{h}");

    let forked = ok(&mut s, "%fork hot --from early lr=1e-2");
    assert_eq!((forked["branch"].as_str(), forked["step"].as_i64()), (Some("hot"), Some(3)));
    ok(&mut s, "%train 10");
    let runs = ok(&mut s, "%runs");
    let runs: Vec<(&str, i64)> = runs.as_array().unwrap().iter().map(|r| (r["branch"].as_str().unwrap(), r["steps"].as_i64().unwrap())).collect();
    assert_eq!(runs, vec![("main", 43), ("hot", 13)]);
    let (outputs, result) = run(&mut s, "%plot loss --runs main,hot");
    result.unwrap();
    assert_eq!(figures(&outputs).len(), 1);
    assert_eq!(ok(&mut s, "%hparams")["lr"], 0.01);

    let generated = ok(&mut s, "%generate \"01234=\" --max-tokens 5");
    assert_eq!(generated["prompt_ids"].as_array().unwrap().len(), 6);
    assert!(generated["generated_ids"].as_array().unwrap().len() <= 5);
    assert!(generated["text"].is_string());
    let metrics = ok(&mut s, "%eval");
    assert!((metrics["perplexity"].as_f64().unwrap() - metrics["loss"].as_f64().unwrap().exp()).abs() < 1e-6);
    let status = ok(&mut s, "%status");
    assert_eq!((status["step"].as_i64(), status["device"].as_str(), status["model"].as_str()), (Some(13), Some("cpu"), Some("gpt2")));
    assert_eq!(ok(&mut s, "%history --last 3").as_array().unwrap().len(), 3);

    assert_eq!(ok(&mut s, "%rewind early")["step"], 3);
    ok(&mut s, "%step 10");
    let path = dir.join("run");
    assert_eq!(ok(&mut s, &format!("%save {}", path.display()))["resumable"], true);
    let mut resumed = Session::new();
    assert_eq!(ok(&mut resumed, &format!("%device cpu\n%load {}", path.display()))["resumed_step"], 13);
    assert_eq!(ok(&mut resumed, "%status")["branch"], "hot");
}

/// State a failing command must leave as it was.
fn snapshot_state(s: &mut Session) -> (Value, Value, Value) {
    (ok(s, "%status"), ok(s, "%hparams"), ok(s, "%weights"))
}

#[test]
fn every_failure_says_what_to_do_and_changes_nothing() {
    let _serial = serial();
    let mut s = reverse_session();
    ok(&mut s, "%step 2");
    let before = snapshot_state(&mut s);
    let cases: &[(&str, &str, &str)] = &[
        ("%set lr=fast", "UsageError", "lr=fast"),
        ("%set lr=1 batch=0", "UsageError", "batch=0"),
        ("%set learning_rate=1", "UsageError", "unknown hyperparameter"),
        ("%trian 5", "UsageError", "did you mean %train"),
        ("%generate", "UsageError", "usage: %generate PROMPT"),
        ("%generate \"01\" --temprature 1", "UsageError", "did you mean --temperature"),
        ("%generate \"01\" --max-tokens many", "UsageError", "--max-tokens expects"),
        ("%load /nonexistent/model", "FileError", "/nonexistent/model"),
        ("%data text /nonexistent/corpus.txt", "FileError", "corpus.txt"),
        ("%data synth revers", "UsageError", "reverse"),
        ("%rewind nowhere", "UsageError", "no snapshot"),
        ("%plot bogus", "UsageError", "loss, lr, grad-norm, val"),
        ("%plot val", "UsageError", "eval_every"),
        ("%attention \"xyz\"", "UsageError", "not in this character tokenizer"),
        ("%predict \"01\"", "UsageError", "classifier"),
        ("%embed \"01\"", "UsageError", "encoder"),
        ("%precision f16", "UsageError", "needs CUDA"),
        ("%train", "UsageError", "how long"),
        ("%train 5 --time 2s", "UsageError", "not both"),
        ("%device cuda:7", "UsageError", "not available"),
        ("%fork main", "UsageError", "exists already"),
        ("%step 1 2", "UsageError", "unexpected `2`"),
        ("%tokenize \"\u{1F600}\"", "UsageError", "not in this character tokenizer"),
        ("let x = 1;", "UsageError", "Rust"),
    ];
    for (cell, name, fragment) in cases {
        let e = fail(&mut s, cell);
        assert_eq!(&e.name, name, "{cell}: {e}");
        assert!(e.message.contains(fragment), "{cell}: `{}` does not mention `{fragment}`", e.message);
    }
    let after = snapshot_state(&mut s);
    assert_eq!(before, after, "a failed command changed the session");

    // Several commands in a cell run in order and stop at the first error.
    let (outputs, result) = run(&mut s, "%echo one\n%bogus\n%echo two");
    assert!(result.is_err());
    let text: String = outputs.iter().filter_map(|o| if let Output::Stream { text, .. } = o { Some(text.as_str()) } else { None }).collect();
    assert_eq!(text, "one\n");
}

#[test]
fn help_completion_and_inspection_come_from_the_command_table() {
    let mut s = Session::new();
    let (outputs, result) = run(&mut s, "%help");
    result.unwrap();
    let Output::Display { bundle, .. } = &outputs[0] else { panic!() };
    for c in tchlab::session::commands::COMMANDS {
        assert!(bundle.plain().contains(&format!("%{}", c.name)), "%help lists %{}", c.name);
    }
    let (outputs, _) = run(&mut s, "%train?");
    assert!(matches!(&outputs[0], Output::Page(text) if text.starts_with("%train [N] [--time DUR]") && text.contains("example: %train 200")));
    let (outputs, _) = run(&mut s, "%help generate");
    assert!(matches!(&outputs[0], Output::Stream { text, .. } if text.contains("--top-p P")));

    let complete = |code: &str| s.complete(code, code.len()).matches;
    assert_eq!(complete("%tr"), vec!["%train"]);
    assert!(complete("%").len() == tchlab::session::commands::COMMANDS.len());
    assert_eq!(complete("%set l"), vec!["lr="]);
    assert_eq!(complete("%plot --s"), vec!["--save", "--smooth"]);
    assert_eq!(complete("%data synth re"), vec!["reverse"]);
    assert_eq!(complete("%plot l"), vec!["loss", "lr"]);
    assert_eq!(complete("%plot loss --runs a --l"), vec!["--log"]);
    assert!(complete("%generate \"x\" ").is_empty(), "nothing to suggest for free text");
    let c = s.complete("%echo a\n%ste", 12);
    assert_eq!((c.start, c.matches), (8, vec!["%step".to_string()]));
    let dir = common::scratch("complete");
    std::fs::write(dir.join("corpus.txt"), "x").unwrap();
    assert_eq!(complete(&format!("%data text {}/cor", dir.display())), vec![format!("{}/corpus.txt", dir.display())]);
    assert!(s.inspect("%generate \"x\"", 3).unwrap().contains("--temperature T"));
    assert_eq!(s.inspect("hello", 2), None);
}

#[test]
fn sweeps_range_tests_and_comparisons_explore_without_moving_the_model() {
    let _serial = serial();
    let mut s = reverse_session();
    ok(&mut s, "%step 5");
    let before = snapshot_state(&mut s);

    let (outputs, result) = run(&mut s, "%sweep lr=[1e-4,3e-3] --steps 30");
    result.unwrap();
    let sweep = result_json(&outputs);
    let trials = sweep["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2);
    assert!(trials.iter().all(|t| t["status"] == "done" && t["losses"].as_array().unwrap().len() == 30));
    assert_eq!(sweep["best_values"]["lr"], "3e-3", "the larger rate learns faster in 30 steps: {sweep}");
    assert_eq!(figures(&outputs).len(), 4, "the trials' curves, the optimisation history, parallel coordinates, score against lr");
    assert!(matches!(&outputs[0], Output::Display { id: Some(_), .. }), "a live results table");
    assert_eq!(snapshot_state(&mut s), before, "a sweep puts the model back");

    let halving = ok(&mut s, "%sweep lr=log(1e-4,1e-2) --method halving --trials 4 --steps 5");
    let statuses: Vec<&str> = halving["trials"].as_array().unwrap().iter().map(|t| t["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "stopped").count(), 3, "4 trials halve to 2, then to 1: {statuses:?}");
    let longest = halving["trials"].as_array().unwrap().iter().map(|t| t["losses"].as_array().unwrap().len()).max().unwrap();
    assert_eq!(longest, 5 + 10 + 20, "rungs of 5, 10 and 20 steps: the last survivor trains through all three");
    // TPE (ten random trials, then two from the model) under successive halving.
    let tpe = ok(&mut s, "%sweep lr=log(1e-4,1e-2) warmup=int(0,5) --method tpe --schedule halving --trials 12 --steps 2");
    let trials = tpe["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 12);
    assert!(trials.iter().all(|t| t["values"][1][1].as_str().unwrap().parse::<i64>().is_ok_and(|w| (0..=5).contains(&w))), "{tpe}");
    assert_eq!(trials.iter().filter(|t| t["status"] == "stopped").count(), 11, "12 halve to 6, 3, 2, 1");
    assert_eq!(snapshot_state(&mut s), before, "a TPE sweep puts the model back");
    assert!(fail(&mut s, "%sweep lr=log(1e-4,1e-2) --schedule sometimes").message.contains("halving, asha or pbt"));
    let step = ok(&mut s, "%status")["step"].as_i64().unwrap();
    let adopted = ok(&mut s, "%sweep lr=[1e-4,3e-3] --steps 10 --adopt");
    assert_eq!(ok(&mut s, "%hparams")["lr"], 0.003, "--adopt sets the best trial's values");
    assert_eq!(ok(&mut s, "%status")["step"].as_i64().unwrap(), step + 10, "--adopt continues from the best trial's state");
    let best = &adopted["trials"][1];
    assert_eq!(ok(&mut s, "%history").as_array().unwrap().last().unwrap()["loss"], best["losses"][9][1], "the history is the best trial's: {adopted}");
    assert!(fail(&mut s, "%sweep lr=log(1e-4,1e-2) --method grid").message.contains("--method random"));
    assert!(fail(&mut s, "%sweep").message.contains("nothing to sweep"));

    let (outputs, result) = run(&mut s, "%lr-find --steps 60");
    result.unwrap();
    let found = result_json(&outputs);
    let suggestion = found["suggestion"].as_f64().expect("a suggestion");
    assert!((1e-7..1.0).contains(&suggestion));
    assert_eq!(figures(&outputs).len(), 1);
    assert_eq!(ok(&mut s, "%status")["step"], step + 10, "the range test puts the model back (where the adopted trial left it)");

    ok(
        &mut s,
        "%snapshot base
%fork fast --from base lr=1e-2 batch=16
%step 3",
    );
    let compared = ok(&mut s, "%compare main fast");
    assert_eq!(compared["differences"]["batch"]["fast"], "16");
    assert_eq!(compared["differences"]["batch"]["main"], "32");
    assert!(fail(&mut s, "%compare main nowhere").message.contains("no branch `nowhere`"));
}

#[test]
fn tokenizers_text_data_precision_plots_and_timing_commands_work() {
    let _serial = serial();
    let dir = common::scratch("session-text");
    let corpus = "the cat sat on the mat. the dog sat on the log. ".repeat(100);
    std::fs::write(dir.join("corpus.txt"), &corpus).unwrap();
    let mut s = Session::new();
    ok(&mut s, "%device cpu\n%seed 1");
    let e = fail(&mut s, &format!("%tokenizer char {}/missing.txt", dir.display()));
    assert!(e.name == "FileError" && e.message.contains("missing.txt"), "{e}");
    assert!(fail(&mut s, &format!("%tokenizer bpe {}/corpus.txt", dir.display())).message.contains("--vocab N"));
    let t = ok(&mut s, &format!("%tokenizer bpe {}/corpus.txt --vocab 300", dir.display()));
    assert_eq!((t["kind"].as_str(), t["vocab"].as_u64().map(|v| v <= 300)), (Some("bpe"), Some(true)));
    let t = ok(&mut s, &format!("%tokenizer char {}/corpus.txt", dir.display()));
    let distinct = corpus.chars().collect::<std::collections::BTreeSet<_>>().len();
    assert_eq!(t["vocab"], distinct, "one id per distinct character of the corpus");
    let tokens = ok(&mut s, "%tokenize \"the cat\"");
    assert_eq!(tokens["tokens"], serde_json::json!(["t", "h", "e", "␣", "c", "a", "t"]), "tokens as people read them");
    assert_eq!(tokens["pieces"], serde_json::json!(["t", "h", "e", " ", "c", "a", "t"]), "and as the vocabulary spells them");
    assert_eq!(tokens["ids"].as_array().unwrap().len(), 7);
    let data = ok(&mut s, &format!("%data text {}/corpus.txt --val 0.1", dir.display()));
    assert!(data.is_object());
    ok(&mut s, "%model gpt --ctx 32\n%set batch=8 eval_every=5");
    let data = ok(&mut s, &format!("%data text {}/corpus.txt --val 0.1", dir.display()));
    assert_eq!((data["train"].as_u64().unwrap() + data["val"].as_u64().unwrap()) as usize, corpus.len());
    assert_eq!(ok(&mut s, "%precision bf16")["precision"], "bf16");
    assert_eq!(ok(&mut s, "%status")["precision"], "bf16");
    ok(&mut s, "%step 10");
    for metric in ["lr", "grad-norm", "val"] {
        let (outputs, result) = run(&mut s, &format!("%plot {metric} --save {}/{metric}.svg", dir.display()));
        result.unwrap();
        assert_eq!(figures(&outputs), vec![(1600, 800)], "{metric}");
        assert!(std::fs::read_to_string(dir.join(format!("{metric}.svg"))).unwrap().starts_with("<svg"));
    }
    ok(&mut s, "%precision f32");
    let (outputs, result) = run(&mut s, "%time %step 2");
    result.unwrap();
    assert!(outputs.iter().any(|o| matches!(o, Output::Stream { text, .. } if text.starts_with("time: "))));
    let timed = ok(&mut s, "%timeit --runs 3 --quiet %tokenize \"the\"");
    assert_eq!(timed["runs"], 3);
    assert!(timed["mean_s"].as_f64().unwrap() > 0.0);
    assert!(fail(&mut s, "%timeit --runs 0 %echo x").message.contains("--runs must be between 1"));
    assert!(fail(&mut s, "%time").message.contains("what should be timed"));
    let written = dir.join("made/here.csv");
    ok(&mut s, &format!("%%writefile {}\ntext,label\nhi,a\n", written.display()));
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "text,label\nhi,a\n");
    assert!(fail(&mut s, "%writefile x.csv").message.contains("%%writefile PATH"));
    let e = fail(&mut s, "%load no-such-model");
    assert!(e.name == "FileError" && e.message.contains("no model of that name"), "{e}");
    assert_eq!(ok(&mut s, "%status")["step"], 12, "the timed %step 2 ran once; %timeit's %tokenize takes no steps");
}

#[test]
fn the_readme_reference_is_the_command_table() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find("<!-- commands:start -->\n").expect("README has the reference markers") + "<!-- commands:start -->\n".len();
    let end = readme.find("<!-- commands:end -->").unwrap();
    let expected = tchlab::session::commands::reference_markdown();
    assert!(readme[start..end] == expected, "README's command reference has drifted from the command table; replace it with:\n{expected}");
}

#[test]
fn an_interrupt_stops_training_at_a_step_boundary_and_keeps_state() {
    let _serial = serial();
    let mut s = reverse_session();
    let cancel = s.cancel_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        cancel.store(true, Ordering::SeqCst);
    });
    let e = fail(&mut s, "%train 1000000");
    stopper.join().unwrap();
    assert_eq!(e.name, "KeyboardInterrupt");
    assert!(e.message.contains("interrupted after step"), "{e}");
    let status = ok(&mut s, "%status");
    let history = ok(&mut s, "%history --last 1000000");
    assert_eq!(status["step"].as_u64().unwrap() as usize, history.as_array().unwrap().len());
    assert!(ok(&mut s, "%step")["loss"].is_number(), "training goes on");
}

#[test]
fn an_encoder_embeds_compares_attends_and_classifies() {
    let _serial = serial();
    let json: Value = serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("minilm.json")).unwrap()).unwrap();
    let minilm = json["model_dir"].as_str().unwrap();
    let mut s = Session::new();
    ok(&mut s, &format!("%device cpu\n%load {minilm}"));
    let e = ok(&mut s, "%embed \"the cat sat\" \"a dog ran\"");
    assert_eq!(e["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(e["embeddings"][0].as_array().unwrap().len(), 384);
    let m = ok(&mut s, "%similarity \"the cat sat on the mat\" \"a cat was sitting on a mat\" \"stock prices fell sharply\"");
    let m: Vec<Vec<f64>> = serde_json::from_value(m["matrix"].clone()).unwrap();
    assert!((m[0][0] - 1.0).abs() < 1e-6);
    assert!(m[0][1] > m[0][2] + 0.3, "paraphrases are closer than unrelated text: {m:?}");
    let (outputs, result) = run(&mut s, "%attention \"the cat sat\" --layer 5 --head 11");
    result.unwrap();
    assert_eq!(result_json(&outputs)["tokens"], serde_json::json!(["[CLS]", "the", "cat", "sat", "[SEP]"]));
    assert_eq!(fail(&mut s, "%attention \"x\" --layer 6").message.lines().next().unwrap(), "--layer must be in 0..5, got 6");

    let dir = common::scratch("session-classify");
    let mut csv = String::from("text,label\n");
    for i in 0..24 {
        let (text, label) =
            if i % 2 == 0 { (format!("what a wonderful film, number {i}"), "pos") } else { (format!("a dreadful boring film, number {i}"), "neg") };
        csv.push_str(&format!("\"{text}\",{label}\n"));
    }
    std::fs::write(dir.join("reviews.csv"), csv).unwrap();
    ok(&mut s, &format!("%load {minilm} --classes 2"));
    let data = ok(&mut s, &format!("%data classify {}/reviews.csv --val 0.25", dir.display()));
    assert_eq!(data["labels"], serde_json::json!(["neg", "pos"]));
    ok(&mut s, "%set batch=8 lr=5e-5\n%train 4");
    let metrics = ok(&mut s, "%eval");
    assert_eq!(metrics["confusion"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).map(|v| v.as_u64().unwrap()).sum::<u64>(), 6);
    let p = ok(&mut s, "%predict \"a wonderful film\"");
    let total: f64 = p["probabilities"].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-6 && p["label"].is_string());
}

#[test]
fn a_llama_from_scratch_trains_rewinds_saves_and_resumes() {
    let _serial = serial();
    let dir = common::scratch("session-llama");
    let mut s = Session::new();
    ok(&mut s, "%device cpu\n%seed 0\n%data synth reverse --length 5");
    let model = ok(&mut s, "%model llama --layers 2 --heads 4 --kv-heads 2 --dim 32");
    assert_eq!(model["model_type"], "llama");
    assert_eq!(model["config"]["num_key_value_heads"], 2);
    assert_eq!(model["config"]["architectures"][0], "LlamaForCausalLM");
    ok(&mut s, "%set lr=3e-3 batch=32");
    let first = ok(&mut s, "%step 1")["loss"].as_f64().unwrap();
    ok(&mut s, "%snapshot start");
    let trained = ok(&mut s, "%train 30");
    assert!(trained["loss"].as_f64().unwrap() < first, "training lowers the loss: {first} → {}", trained["loss"]);
    ok(&mut s, "%rewind start");
    assert_eq!(ok(&mut s, "%status")["step"], 1);
    ok(&mut s, "%train 5");
    let path = dir.join("llama");
    ok(&mut s, &format!("%save {}", path.display()));
    let before = ok(&mut s, "%status --checksum")["weights_checksum"].clone();
    let mut resumed = Session::new();
    assert_eq!(ok(&mut resumed, &format!("%device cpu\n%load {}", path.display()))["resumed_step"], 6);
    assert_eq!(ok(&mut resumed, "%status --checksum")["weights_checksum"], before);
    assert_eq!(fail(&mut s, "%model llama --heads 4 --kv-heads 3").name, "UsageError");
    assert_eq!(ok(&mut s, "%status --checksum")["weights_checksum"], before, "a refused model changes nothing");
}

#[test]
fn a_loaded_llama_fine_tunes_on_text() {
    let _serial = serial();
    let dir = common::scratch("session-llama-tune");
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, "the cat sat on the mat. ".repeat(200)).unwrap();
    let mut s = Session::new();
    let model = common::fixtures().join("llama-gqa");
    ok(&mut s, &format!("%device cpu\n%seed 1\n%load {}\n%tokenizer char {}", model.display(), corpus.display()));
    ok(&mut s, &format!("%data text {}", corpus.display()));
    ok(&mut s, "%set lr=1e-3 batch=8 ctx=32");
    let first = ok(&mut s, "%step 1")["loss"].as_f64().unwrap();
    let later = ok(&mut s, "%train 20")["loss"].as_f64().unwrap();
    assert!(later < first, "fine-tuning lowers the loss: {first} → {later}");
}

/// A session with SmolLM2 loaded by name (linked in a scratch models directory), and
/// what `%load` returned.
fn smollm2_session(models_dir: &str) -> (Session, Value) {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("smollm2.json")).unwrap()).unwrap();
    let models = common::scratch(models_dir);
    std::os::unix::fs::symlink(reference["file"].as_str().unwrap(), models.join("SmolLM2-135M-Instruct")).unwrap();
    std::env::set_var("TCHLAB_MODELS", &models);
    let mut s = Session::new();
    let loaded = ok(&mut s, "%device cpu\n%load SmolLM2-135M-Instruct");
    (s, loaded)
}

#[test]
fn smollm2_loads_by_name_chats_streams_and_attends() {
    let _serial = serial();
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("smollm2.json")).unwrap()).unwrap();
    let (mut s, loaded) = smollm2_session("models");
    assert_eq!((loaded["model_type"].as_str(), loaded["loaded"].as_i64()), (Some("llama"), Some(272)));

    let (outputs, result) = run(&mut s, "%chat \"What is the capital of France?\" --max-tokens 32");
    result.unwrap();
    let streamed: String = outputs.iter().filter_map(|o| if let Output::Stream { text, .. } = o { Some(text.as_str()) } else { None }).collect();
    let reply = result_json(&outputs);
    assert_eq!(reply["text"], reference["reply_texts"][0]);
    assert_eq!(streamed.trim(), reference["reply_texts"][0].as_str().unwrap(), "the reply is streamed as it is made");
    assert!(outputs.iter().filter(|o| matches!(o, Output::Stream { .. })).count() >= 2, "in more than one piece");
    assert_eq!(reply["messages"].as_array().unwrap().len(), 2);

    let shown = ok(&mut s, "%chat --show \"And of Italy?\"");
    let prompt = shown["prompt"].as_str().unwrap();
    assert!(prompt.contains("The capital of France is Paris.<|im_end|>") && prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
    ok(&mut s, "%chat --reset");
    let fresh = ok(&mut s, "%chat --show \"What is the capital of France?\"");
    assert_eq!(fresh["prompt"], reference["rendered"][0]);
    let with_system = ok(&mut s, "%chat --show --system \"You answer in one word.\" \"Name a colour.\"");
    assert_eq!(with_system["prompt"], reference["rendered"][1]);

    let attention = ok(&mut s, "%attention \"the cat sat on the mat\" --layer 15 --head 4");
    let rows = attention["attention"].as_array().unwrap();
    assert_eq!(rows.len(), attention["tokens"].as_array().unwrap().len());

    // One readable form of a token everywhere, the vocabulary's pieces beside it.
    // (A command is one line: newlines are in lib/tests/readable_tokens.rs.)
    let text = "\"the cat\tsat 🍕\"";
    let tokenized = ok(&mut s, &format!("%tokenize {text}"));
    let readable = tokenized["tokens"].clone();
    assert_eq!(readable, serde_json::json!(["the", "␣cat", "⇥", "sat", "␣\\xf0\\x9f", "\\x8d", "\\x95"]));
    assert_eq!(tokenized["pieces"], serde_json::json!(["the", "Ġcat", "ĉ", "sat", "ĠðŁ", "į", "ķ"]));
    let attention = ok(&mut s, &format!("%attention {text} --layer 0 --head 0"));
    assert_eq!((&attention["tokens"], &attention["pieces"]), (&readable, &tokenized["pieces"]));
    let lens = ok(&mut s, &format!("%logit-lens {text} --top 1"));
    assert_eq!((&lens["tokens"], &lens["pieces"]), (&readable, &tokenized["pieces"]));
    let (outputs, _) = run(&mut s, &format!("%attention {text} --layer 0 --head 0"));
    let cells =
        outputs.iter().find_map(|o| if let Output::Display { bundle, .. } = o { bundle.heatmap() } else { None }).expect("the map's cells for terminals");
    assert_eq!((serde_json::json!(cells.rows), serde_json::json!(cells.columns)), (readable.clone(), readable));
    let generated = ok(&mut s, "%generate \"The capital of France is\" --max-tokens 4");
    assert_eq!(generated["generated_ids"].as_array().unwrap().len(), 4);
}

#[test]
fn chat_refuses_what_it_cannot_do_and_changes_nothing() {
    let _serial = serial();
    let mut s = reverse_session();
    let e = fail(&mut s, "%chat \"hello\"");
    assert!(e.message.contains("chat template"), "{e}");
    let e = fail(&mut s, "%chat \"hello\" --max-tokens 100000000");
    assert!(e.message.contains("chat template") || e.message.contains("--max-tokens"), "{e}");
    let (outputs, result) = run(&mut s, "%generate \"12\" --top-p 0");
    assert!(result.is_err() && outputs.is_empty(), "refused options write nothing, not even the prompt: {outputs:?}");
    let (outputs, result) = run(&mut s, "%generate \"12\" --max-tokens 0");
    result.unwrap();
    let streamed: String = outputs.iter().filter_map(|o| if let Output::Stream { text, .. } = o { Some(text.as_str()) } else { None }).collect();
    assert_eq!(streamed, "12\n", "no tokens asked for: the prompt alone");
}

#[test]
fn looking_inside_smollm2_finds_induction_heads_and_where_paris_comes_from() {
    let _serial = serial();
    let (mut s, _) = smollm2_session("models-inside");
    let eiffel = "\"The Eiffel Tower is in the city of\"";

    let cached = ok(&mut s, &format!("%cache {eiffel} --names \"blocks.*.hook_resid_post,blocks.3.attn.hook_pattern\""));
    let listed = cached["activations"].as_array().unwrap();
    assert_eq!(listed.len(), 31);
    let pattern = listed.iter().find(|a| a["name"] == "blocks.3.attn.hook_pattern").unwrap();
    assert_eq!(pattern["shape"], serde_json::json!([1, 9, 9, 9]), "one map per query head");
    let e = fail(&mut s, &format!("%cache {eiffel} --budget 0.01"));
    assert!(e.name == "MemoryError" && e.message.contains("over the cache budget"), "{e}");
    let e = fail(&mut s, &format!("%cache {eiffel} --names blocks.0.hook_resid_psot"));
    assert!(e.message.contains("did you mean blocks.0.hook_resid_post"), "{e}");

    let (outputs, result) = run(&mut s, &format!("%logit-lens {eiffel} --top 3"));
    result.unwrap();
    assert_eq!(figures(&outputs).len(), 1);
    let lens = result_json(&outputs);
    assert_eq!(lens["top"][30][8][0]["token"], "␣Paris", "the last layer answers Paris");
    assert_eq!(lens["next_probability"][0][8], Value::Null, "nothing follows the last token");

    let patched = ok(&mut s, &format!("%patch {eiffel} \"The Colosseum is in the city of\" --metric logit-diff:Paris,Rome"));
    let restored = patched["restored"].as_array().unwrap();
    assert_eq!(restored.len(), 30);
    let at = |l: usize, p: usize| restored[l][p].as_f64().unwrap();
    assert!(at(0, 2) > 0.5 && at(29, 2).abs() < 0.05, "early the subject carries it: {} {}", at(0, 2), at(29, 2));
    assert!(at(29, 8) > 0.5 && at(0, 8).abs() < 0.05, "late the last position does: {} {}", at(29, 8), at(0, 8));
    assert!(patched["clean"].as_f64().unwrap() > 0.0 && patched["corrupt"].as_f64().unwrap() < 0.0);

    let heads = ok(&mut s, "%heads induction");
    let top: Vec<&str> = heads["top"].as_array().unwrap().iter().take(4).map(|h| h["head"].as_str().unwrap()).collect();
    assert!(top.contains(&"18.6") && top.contains(&"17.4"), "{top:?}");
    assert!(heads["repeat_loss"].as_f64().unwrap() < heads["first_loss"].as_f64().unwrap() / 3.0);

    let repeated = "\"one seven kettle orbit marble fig cloud. one seven kettle orbit marble fig cloud.\"";
    let ablated = ok(&mut s, &format!("%ablate 17.3 17.4 17.5 18.6 {repeated}"));
    assert!(ablated["change"].as_f64().unwrap() > 0.1, "the loss on a repeat rises without the induction heads: {ablated}");
    let mean = ok(&mut s, &format!("%ablate 18.6 --mean --metric logit-diff:Paris,Rome {eiffel}"));
    assert_eq!(mean["targets"], serde_json::json!(["18.6"]));

    let attribution = ok(&mut s, &format!("%attribute {eiffel} --target Paris"));
    let sum = |key: &str| attribution[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum::<f64>();
    let total = attribution["embed"].as_f64().unwrap() + sum("attn") + sum("mlp");
    assert!((total - attribution["logit"].as_f64().unwrap()).abs() < 1e-2, "{total} vs {}", attribution["logit"]);
}

#[test]
fn looking_inside_refuses_what_it_cannot_do_and_changes_nothing() {
    let _serial = serial();
    let mut s = reverse_session();
    ok(&mut s, "%train 5");
    let before = snapshot_state(&mut s);
    for (cell, expected) in [
        ("%logit-lens \"12\" --top 0", "--top"),
        ("%patch \"12\" \"123\" --metric logit-diff:1,2", "the same number"),
        ("%patch \"12\" \"13\"", "--metric"),
        ("%patch \"12\" \"13\" --metric logit-diff:1,2 --over everything", "--over"),
        ("%patch \"12\" \"13\" --metric logit-diff:12,2", "not one token"),
        ("%patch \"12\" \"13\" --metric logit-diff:#100000,2", "outside the vocabulary"),
        ("%patch \"12\" \"12\" --metric logit-diff:1,2", "no difference"),
        ("%ablate 9.1 \"1234\"", "outside the model's layers"),
        ("%ablate 1.7 \"1234\"", "outside the model's heads"),
        ("%ablate \"1234\"", "what to ablate"),
        ("%ablate heads --data", "takes a text"),
        ("%heads induction --length 100000", "--length"),
        ("%heads induction --batch 0", "--batch"),
        ("%heads sideways", "induction"),
        ("%cache \"12\" --budget -1", "--budget"),
        ("%cache \"12\" --budget 1e300", "--budget"),
        ("%cache \"12\" --names \",\"", "empty pattern"),
        ("%attribute \"12\"", "--target"),
        ("%cache \"\"", "no tokens"),
    ] {
        let e = fail(&mut s, cell);
        assert!(e.message.contains(expected), "{cell}: {e}");
    }
    assert_eq!(snapshot_state(&mut s), before, "failed commands changed the session");
    let long = format!("%patch \"{}\" \"{}\" --metric logit-diff:1,2", "1".repeat(600), "2".repeat(600));
    assert!(fail(&mut s, &long).message.contains("more than 512"));

    let ablated = ok(&mut s, "%ablate 0 --data");
    let eval = ok(&mut s, "%eval");
    assert!((ablated["before"].as_f64().unwrap() - eval["loss"].as_f64().unwrap()).abs() < 1e-4, "--data scores what %eval scores: {ablated} {eval}");
    assert!((ablated["after"].as_f64().unwrap() - ablated["before"].as_f64().unwrap()).abs() > 1e-4, "{ablated}");
    let (outputs, result) = run(&mut s, "%ablate heads \"123=321\"");
    result.unwrap();
    assert_eq!(figures(&outputs).len(), 1);
    assert_eq!(result_json(&outputs)["effects"].as_array().unwrap().len(), 2);

    let json: Value = serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("minilm.json")).unwrap()).unwrap();
    let mut encoder = Session::new();
    ok(&mut encoder, &format!("%device cpu\n%load {}", json["model_dir"].as_str().unwrap()));
    let e = fail(&mut encoder, "%logit-lens \"abc\"");
    assert!(e.message.contains("language model"), "{e}");
    let scores = ok(&mut encoder, "%heads first-token --length 3 --batch 1");
    assert_eq!(scores["scores"].as_array().unwrap().len(), 6, "attention scores need no unembedding");
}

/// Sends an explorer's control an event; returns the panels shown and the result.
fn event(s: &mut Session, panel: &str, event: tchlab::session::panel::PanelEvent) -> (Vec<tchlab::session::panel::Panel>, Result<(), CellError>) {
    let mut panels = vec![];
    let result = s.panel_event(panel, event, &mut |o| {
        if let Output::Panel(p) = o {
            panels.push(p)
        }
    });
    (panels, result)
}

fn set(control: &str, value: tchlab::session::panel::Setting) -> tchlab::session::panel::PanelEvent {
    tchlab::session::panel::PanelEvent::Set { control: control.into(), value }
}

fn press(control: &str) -> tchlab::session::panel::PanelEvent {
    tchlab::session::panel::PanelEvent::Press { control: control.into() }
}

#[test]
fn explorers_redraw_on_their_controls_and_refuse_bad_values_changing_nothing() {
    use tchlab::session::panel::Setting::{Flag, Number};
    let _serial = serial();
    let mut s = reverse_session();
    ok(&mut s, "%train 30");

    // Generation: the seed and temperature change the text; the same values give it again.
    let (outputs, result) = run(&mut s, "%explore generate \"3141=\"");
    result.unwrap();
    let Some(Output::Panel(panel)) = outputs.iter().find(|o| matches!(o, Output::Panel(_))) else { panic!("a panel: {outputs:?}") };
    assert!(panel.picture.plain().starts_with("3141="), "{}", panel.picture.plain());
    assert_eq!(result_json(&outputs)["controls"][0]["name"], "temperature");
    let id = panel.id.clone();
    let mut texts = std::collections::BTreeSet::new();
    for seed in 1..6 {
        let (panels, result) = event(&mut s, &id, set("seed", Number(seed as f64)));
        result.unwrap();
        texts.insert(panels.last().unwrap().picture.plain().to_string());
    }
    assert!(texts.len() > 1, "five seeds at temperature 0.8 gave one text: {texts:?}");
    let (first, _) = event(&mut s, &id, set("temperature", Number(0.0)));
    let (again, _) = event(&mut s, &id, set("seed", Number(3.0)));
    assert_eq!(first.last().unwrap().picture, again.last().unwrap().picture, "greedy ignores the seed");

    // Bad values: refused by name, the panel shown again as it was, nothing kept.
    let before: tchlab::session::panel::Panel = (*s.panels().last().unwrap()).clone();
    for (control, value) in [
        ("temperature", Number(f64::NAN)),
        ("temperature", Number(7.0)),
        ("top_k", Number(2.5)),
        ("max_tokens", Number(1e12)),
        ("seed", Flag(true)),
        ("nonsense", Number(1.0)),
    ] {
        let (panels, result) = event(&mut s, &id, set(control, value.clone()));
        let e = result.expect_err(&format!("{control} = {value:?}"));
        assert!(e.message.contains(control), "{e}");
        assert_eq!(panels.last(), Some(&before), "a refused value shows the panel as it was");
    }
    assert!(event(&mut s, &id, press("seed")).1.unwrap_err().message.contains("not a button"));
    assert!(event(&mut s, "explore-0", press("train")).1.unwrap_err().message.contains("no open explorer"));

    // Attention: the layer slider redraws the figure; the grid shows every head.
    let (outputs, result) = run(&mut s, "%explore attention \"3141=\"");
    result.unwrap();
    let Some(Output::Panel(attention)) = outputs.iter().find(|o| matches!(o, Output::Panel(_))) else { panic!() };
    let layer0 = attention.picture.png().expect("a figure");
    let (panels, result) = event(&mut s, &attention.id, set("layer", Number(1.0)));
    result.unwrap();
    assert_ne!(panels.last().unwrap().picture.png().unwrap(), layer0);
    assert!(event(&mut s, &attention.id, set("layer", Number(2.0))).1.unwrap_err().message.contains("outside 0..1"));
    let (panels, _) = event(&mut s, &attention.id, set("grid", Flag(true)));
    assert!(panels.last().unwrap().picture.plain().contains("all 2 heads"));

    // Training: each press forks a try from the snapshot; rewind goes back; keep finishes.
    let step = ok(&mut s, "%status")["step"].clone();
    let (outputs, result) = run(&mut s, "%explore train");
    result.unwrap();
    let Some(Output::Panel(train)) = outputs.iter().find(|o| matches!(o, Output::Panel(_))) else { panic!() };
    let train = train.id.clone();
    event(&mut s, &train, set("steps", Number(10.0))).1.unwrap();
    event(&mut s, &train, set("lr", Number(1e-2))).1.unwrap();
    let (panels, result) = event(&mut s, &train, press("train"));
    result.unwrap();
    assert!(panels.last().unwrap().picture.png().is_some(), "the loss plot");
    assert_eq!(ok(&mut s, "%status")["step"], step.as_i64().unwrap() + 10);
    event(&mut s, &train, set("lr", Number(1e-3))).1.unwrap();
    event(&mut s, &train, press("train")).1.unwrap();
    let runs = ok(&mut s, "%runs");
    let names: Vec<&str> = runs.as_array().unwrap().iter().map(|r| r["branch"].as_str().unwrap()).collect();
    assert!(names.contains(&"try-1") && names.contains(&"try-2"), "{names:?}");
    let try1 = runs.as_array().unwrap().iter().find(|r| r["branch"] == "try-1").unwrap();
    assert!(try1["changes"].as_str().unwrap().contains("lr=0.01@"), "{try1}");
    let (panels, result) = event(&mut s, &train, press("rewind"));
    result.unwrap();
    assert_eq!(ok(&mut s, "%status")["step"], step);
    assert!(panels.last().unwrap().picture.plain().contains("try-2"), "rewinding keeps the tries drawn");
    event(&mut s, &train, press("train")).1.unwrap();
    event(&mut s, &train, press("keep")).1.unwrap();
    assert!(s.panels().iter().find(|p| p.id == train).unwrap().finished);
    assert!(event(&mut s, &train, press("train")).1.unwrap_err().message.contains("finished"));
    assert_eq!(ok(&mut s, "%status")["branch"], "try-3");

    // An interrupted try keeps its steps, as %train does, and is drawn.
    let (outputs, _) = run(&mut s, "%explore train");
    let Some(Output::Panel(again)) = outputs.iter().find(|o| matches!(o, Output::Panel(_))) else { panic!() };
    let again = again.id.clone();
    event(&mut s, &again, set("steps", Number(2000.0))).1.unwrap();
    let cancel = s.cancel_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        cancel.store(true, Ordering::SeqCst);
    });
    let e = event(&mut s, &again, press("train")).1.unwrap_err();
    stopper.join().unwrap();
    assert_eq!(e.name, "KeyboardInterrupt", "{e}");
    assert!(s.panels().iter().find(|p| p.id == again).unwrap().picture.plain().contains("try-4"));
}

#[test]
fn asha_and_pbt_sweep_the_reverse_task_and_put_the_model_back() {
    let _serial = serial();
    let mut s = reverse_session();
    ok(&mut s, "%step 5");
    let before = snapshot_state(&mut s);
    let asha = ok(&mut s, "%sweep lr=log(1e-4,1e-2) --schedule asha --trials 6 --steps 3");
    let trials = asha["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 6);
    let rungs: Vec<usize> = trials.iter().map(|t| t["rungs"].as_array().unwrap().len()).collect();
    assert!(rungs.iter().any(|&r| r >= 2), "someone was promoted: {rungs:?}");
    for t in trials {
        let n = t["rungs"].as_array().unwrap().len();
        assert_eq!(t["losses"].as_array().unwrap().len(), (0..n).map(|k| 3 << k).sum::<usize>(), "rungs of 3, 6, 12 steps: {t}");
    }
    assert_eq!(snapshot_state(&mut s), before, "an ASHA sweep puts the model back");

    let (outputs, result) = run(&mut s, "%sweep lr=log(1e-4,1e-2) warmup=int(0,3) --schedule pbt --trials 4 --rounds 3 --steps 4");
    result.unwrap();
    let pbt = result_json(&outputs);
    let members = pbt["trials"].as_array().unwrap();
    assert!(members.iter().all(|t| t["rungs"].as_array().unwrap().len() == 3 && t["losses"].as_array().unwrap().len() == 12), "{pbt}");
    let exploits: Vec<&Value> = members.iter().flat_map(|t| t["lineage"].as_array().into_iter().flatten()).collect();
    assert_eq!(exploits.len(), 2, "one of four exploits after each of rounds 1 and 2: {pbt}");
    for e in &exploits {
        // The copy continues from the donor's step: its first loss of the round follows the donor's last.
        let member = members.iter().find(|t| t["lineage"].as_array().is_some_and(|l| l.contains(e))).unwrap();
        let round = e["round"].as_u64().unwrap() as usize;
        assert_eq!(member["losses"][4 * round][0].as_i64().unwrap(), e["step"].as_i64().unwrap() + 1);
    }
    let texts: Vec<String> =
        outputs.iter().filter_map(|o| if let Output::Display { bundle, .. } = o { Some(bundle.plain().to_string()) } else { None }).collect();
    assert!(texts.iter().any(|t| t.contains("PBT lineage of lr")), "{texts:?}");
    assert_eq!(snapshot_state(&mut s), before, "a PBT sweep puts the model back");
}

#[test]
fn a_sweep_writes_its_study_as_trials_finish_and_show_draws_it_again() {
    let _serial = serial();
    let dir = common::scratch("study");
    let mut s = reverse_session();
    let study = dir.join("lr");
    let swept = ok(&mut s, &format!("%sweep lr=log(1e-4,1e-2) schedule=[constant,cosine] --trials 4 --steps 5 --study {}", study.display()));
    let text = std::fs::read_to_string(study.join("study.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 1 + 4, "a header and a line per trial:\n{text}");
    let (outputs, result) = run(&mut s, &format!("%sweep --show {}", study.display()));
    result.unwrap();
    assert_eq!(result_json(&outputs)["trials"], swept["trials"], "the study holds the trials exactly");
    assert_eq!(result_json(&outputs)["best"], swept["best"]);
    assert_eq!(figures(&outputs).len(), 4, "curves, history, parallel coordinates (a log axis and a categorical one), score against lr");
    let e = fail(&mut s, &format!("%sweep lr=[1e-3] --study {}", study.display()));
    assert!(e.message.contains("holds a study already"), "{e}");
    assert!(fail(&mut s, &format!("%sweep lr=[1e-3] --show {}", study.display())).message.contains("takes no values"));

    // Halving records trials as they are stopped too; the last record of each wins.
    let halving = dir.join("halving");
    ok(&mut s, &format!("%sweep lr=log(1e-4,1e-2) --method halving --trials 4 --steps 3 --study {}", halving.display()));
    let shown = ok(&mut s, &format!("%sweep --show {}", halving.display()));
    let statuses: Vec<&str> = shown["trials"].as_array().unwrap().iter().map(|t| t["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "stopped").count(), 3, "{statuses:?}");

    // An interrupted sweep keeps every trial that finished.
    let interrupted = dir.join("interrupted");
    let cancel = s.cancel_handle();
    let file = interrupted.join("study.jsonl");
    let stopper = std::thread::spawn(move || {
        // Once a trial is in the study (its header and one line), however busy the machine.
        let started = std::time::Instant::now();
        while std::fs::read_to_string(&file).map_or(0, |t| t.lines().count()) < 2 && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        cancel.store(true, Ordering::SeqCst);
    });
    let e = fail(&mut s, &format!("%sweep lr=log(1e-4,1e-2) --trials 200 --steps 20 --study {}", interrupted.display()));
    stopper.join().unwrap();
    assert_eq!(e.name, "KeyboardInterrupt");
    assert!(e.message.contains("in the study"), "{e}");
    let kept = ok(&mut s, &format!("%sweep --show {}", interrupted.display()));
    let kept = kept["trials"].as_array().unwrap();
    assert!(!kept.is_empty() && kept.len() < 200 && kept.iter().all(|t| t["status"] == "done"), "{kept:?}");

    // A last line cut short is left out; a bad line elsewhere is refused by number.
    let file = study.join("study.jsonl");
    std::fs::write(&file, format!("{text}{{\"id\": 5, \"valu")).unwrap();
    assert_eq!(ok(&mut s, &format!("%sweep --show {}", study.display()))["trials"].as_array().unwrap().len(), 4);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(2, "not json");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let e = fail(&mut s, &format!("%sweep --show {}", study.display()));
    assert!(e.message.contains("line 3") && e.message.contains("study.jsonl"), "{e}");
    assert!(fail(&mut s, &format!("%sweep --show {}", dir.join("nowhere").display())).message.contains("nowhere"));
}

#[test]
fn an_encoder_decoder_generates_and_searches_as_transformers_does_and_refuses_what_it_cannot_run() {
    let _serial = serial();
    let dir = common::fixtures().join("t5-v1");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("session.json")).unwrap()).unwrap();
    let ids = |v: &Value| -> Vec<i64> {
        let all: Vec<i64> = v.as_array().unwrap().iter().map(|i| i.as_i64().unwrap()).collect();
        // transformers fills a row that ended early with T5's end token (1): keep the first.
        all.iter().position(|&i| i == 1).map_or(all.clone(), |end| all[..=end].to_vec())
    };
    let mut s = Session::new();
    ok(&mut s, &format!("%device cpu\n%load {}", dir.display()));
    let text = reference["text"].as_str().unwrap();
    let greedy = ok(&mut s, &format!("%generate \"{text}\" --max-tokens 8"));
    assert_eq!(greedy["prompt_ids"], reference["ids"], "the source is tokenized with T5's end token");
    assert_eq!(serde_json::from_value::<Vec<i64>>(greedy["generated_ids"].clone()).unwrap(), ids(&reference["greedy"]));
    let searched = ok(&mut s, &format!("%generate \"{text}\" --max-tokens 8 --beams 3"));
    let (found, want) = (searched["beams"].as_array().unwrap(), reference["beams"].as_array().unwrap());
    assert_eq!(found.len(), want.len());
    let best = ok(&mut s, &format!("%generate \"{text}\" --max-tokens 8 --beams 3 --return 1"));
    assert_eq!(best["beams"].as_array().unwrap().as_slice(), &found[..1], "--return 1 keeps the best");
    for (f, w) in found.iter().zip(want) {
        assert_eq!(serde_json::from_value::<Vec<i64>>(f["ids"].clone()).unwrap(), ids(&w["ids"]));
        assert!((f["score"].as_f64().unwrap() - w["score"].as_f64().unwrap()).abs() < 1e-5, "{f} vs {w}");
    }
    // peft's default targets for T5, `q` and `v`, match the cross-attention's too.
    let lora = ok(&mut s, "%lora r=4");
    let adapted: Vec<&str> = lora["layers"].as_array().unwrap().iter().map(|l| l["layer"].as_str().unwrap()).collect();
    assert_eq!(adapted.len(), 12, "{adapted:?}");
    assert!(adapted.contains(&"decoder.block.1.layer.1.EncDecAttention.v") && adapted.contains(&"encoder.block.0.layer.0.SelfAttention.q"));
    ok(&mut s, "%lora drop");
    // Attention on the source: the encoder's over it, and the cross-attention's rows — the
    // decoder's start token, then what it wrote greedily — over its tokens.
    let cross = ok(&mut s, &format!("%attention \"{text}\" --layer 1 --head 2"));
    let source: Vec<String> = text.split(' ').map(String::from).chain(["</s>".to_string()]).collect();
    assert_eq!(cross["kind"], "cross");
    assert_eq!(serde_json::from_value::<Vec<String>>(cross["keys"].clone()).unwrap(), source);
    // The decoder writes until its end token (at most 32 tokens); the reference has 8.
    let rows = serde_json::from_value::<Vec<String>>(cross["tokens"].clone()).unwrap();
    let written: Vec<String> = ids(&reference["greedy"]).iter().map(|id| format!("w{id}")).collect();
    assert!((9..=32).contains(&rows.len()), "{rows:?}");
    assert_eq!(rows[..9], *std::iter::once("<pad>".to_string()).chain(written).collect::<Vec<_>>(), "the rows begin as transformers' greedy reply");
    let map: Vec<Vec<f64>> = serde_json::from_value(cross["attention"].clone()).unwrap();
    assert!(map.len() == rows.len() && map.iter().all(|r| r.len() == source.len() && (r.iter().sum::<f64>() - 1.0).abs() < 1e-5));
    let encoder = ok(&mut s, &format!("%attention \"{text}\" --kind encoder"));
    assert_eq!((encoder["kind"].as_str(), encoder["layers"].as_i64()), (Some("encoder"), Some(2)));
    assert_eq!(encoder["tokens"], encoder["keys"]);
    let decoder = ok(&mut s, &format!("%attention \"{text}\" --kind decoder --layer 0 --head 0"));
    let map: Vec<Vec<f64>> = serde_json::from_value(decoder["attention"].clone()).unwrap();
    assert!(map.iter().enumerate().all(|(i, r)| r[i + 1..].iter().all(|&p| p == 0.0)), "the decoder attends causally: {map:?}");
    for (cell, says) in [("%logit-lens \"w5 w6\"", "this t5 model has none"), ("%attention \"w5\" --kind sideways", "encoder, decoder or cross")] {
        let before = ok(&mut s, "%status --checksum")["weights_checksum"].clone();
        let e = fail(&mut s, cell);
        assert!(e.message.contains(says), "{cell}: {}", e.message);
        assert_eq!(ok(&mut s, "%status --checksum")["weights_checksum"], before, "{cell} changed the model");
    }
    // Pairs from a TSV file fine-tune it: reversing three words.
    let data = common::scratch("session-t5");
    let mut tsv = String::from("en\tde\n");
    for i in 0..40 {
        let words: Vec<String> = (0..3).map(|j| format!("w{}", 3 + (13 * i + 29 * j) % 90)).collect();
        tsv.push_str(&format!("{}\t{}\n", words.join(" "), words.iter().rev().cloned().collect::<Vec<_>>().join(" ")));
    }
    std::fs::write(data.join("pairs.tsv"), tsv).unwrap();
    let ready = ok(&mut s, &format!("%data pairs {}/pairs.tsv --source en --target de --val 0.2", data.display()));
    assert_eq!((ready["kind"].as_str(), ready["train"].as_u64(), ready["val"].as_u64()), (Some("pairs"), Some(32), Some(8)));
    ok(&mut s, "%set batch=8 lr=1e-2 warmup=0 eval_every=0");
    let before = ok(&mut s, "%eval")["loss"].as_f64().unwrap();
    ok(&mut s, "%train 30");
    let after = ok(&mut s, "%eval")["loss"].as_f64().unwrap();
    assert!(after < 0.95 * before, "fine-tuning on pairs: validation loss {before} → {after}");
    let e = fail(&mut s, &format!("%data pairs {}/pairs.tsv --source english", data.display()));
    assert!(e.message.contains("no column `english`") && e.message.contains("en, de"), "{}", e.message);
    std::fs::write(data.join("words.txt"), "w5 w6 w7 w8 w9 w10\n".repeat(40)).unwrap();
    let e = fail(&mut s, &format!("%data text {}/words.txt", data.display()));
    assert!(e.message.contains("source → target pairs"), "{}", e.message);
}

#[test]
fn a_t5_from_scratch_learns_source_to_target_pairs_and_resumes_exactly() {
    let _serial = serial();
    let mut s = Session::new();
    ok(&mut s, "%device cpu\n%seed 0\n%data synth sort --length 4 --symbols 6 --seq2seq");
    let built = ok(&mut s, "%model t5 --layers 2 --decoder-layers 2 --heads 4 --dim 32");
    assert_eq!(built["model_type"], "t5");
    // The decoder starts from `=`, which the pairs' targets begin with (training checks it).
    assert!(built["config"]["decoder_start_token_id"].is_i64(), "{built}");
    ok(&mut s, "%set batch=32 lr=1e-2 warmup=0 eval_every=0");
    let untrained = ok(&mut s, "%eval");
    let before = untrained["loss"].as_f64().unwrap();
    ok(&mut s, "%train 150");
    let trained = ok(&mut s, "%eval");
    let after = trained["loss"].as_f64().unwrap();
    assert!(after < 0.25 * before, "sorting pairs: validation loss {before} → {after}");
    // %eval generates for the 256 validation sources and scores the answers.
    let (g0, g1) = (&untrained["generated"], &trained["generated"]);
    assert_eq!(g1["examples"], 256);
    assert!(g1["exact_match"].as_f64().unwrap() > 0.5 && g1["exact_match"].as_f64() > g0["exact_match"].as_f64(), "{g0} → {g1}");
    let beams = ok(&mut s, "%eval --beams 2")["generated"].clone();
    assert!(beams["exact_match"].as_f64().unwrap() > 0.5, "{beams}");
    assert!(fail(&mut s, "%eval --beams 1").message.contains("--beams"));
    let sorted = ok(&mut s, "%generate \"3120\" --max-tokens 4");
    assert_eq!(sorted["text"], "0123", "{sorted}");
    let searched = ok(&mut s, "%generate \"5241\" --max-tokens 4 --beams 2");
    assert_eq!(searched["beams"][0]["text"], "1245", "{searched}");

    // Checkpoints of encoder–decoders resume bit for bit, their data spec included.
    let dir = common::scratch("session-t5-resume");
    ok(&mut s, &format!("%save {}", dir.display()));
    ok(&mut s, "%train 3");
    let trained = ok(&mut s, "%status --checksum")["weights_checksum"].clone();
    let mut resumed = Session::new();
    ok(&mut resumed, &format!("%device cpu\n%load {}", dir.display()));
    ok(&mut resumed, "%train 3");
    assert_eq!(ok(&mut resumed, "%status --checksum")["weights_checksum"], trained);

    // Pairs need an encoder–decoder, and an encoder–decoder needs pairs.
    let e = fail(&mut s, "%data synth sort --length 4 --symbols 6");
    assert!(e.message.contains("source → target pairs"), "{}", e.message);
    ok(&mut s, "%model gpt --layers 1 --heads 2 --dim 16");
    let e = fail(&mut s, "%data synth sort --length 4 --symbols 6 --seq2seq");
    assert!(e.message.contains("train an encoder–decoder"), "{}", e.message);
}

#[test]
fn bart_generates_by_its_generation_config_as_transformers_generate_does() {
    use tchlab::session::panel::Setting;
    let _serial = serial();
    let dir = common::fixtures().join("bart");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("session.json")).unwrap()).unwrap();
    let ids = |v: &Value| -> Vec<i64> {
        let all: Vec<i64> = v.as_array().unwrap().iter().map(|i| i.as_i64().unwrap()).collect();
        all.iter().position(|&i| i == 2).map_or(all.clone(), |end| all[..=end].to_vec())
    };
    let mut s = Session::new();
    ok(&mut s, &format!("%device cpu\n%load {}", dir.display()));
    let text = reference["text"].as_str().unwrap();
    // No options: the generation config's 4 beams, lengths, penalty, n-gram ban and forced
    // tokens, as `model.generate(ids)` in transformers.
    let searched = ok(&mut s, &format!("%generate \"{text}\""));
    assert_eq!(searched["prompt_ids"], reference["ids"], "the source is tokenized with BART's <s> … </s>");
    let (found, want) = (searched["beams"].as_array().unwrap(), reference["beams"].as_array().unwrap());
    assert_eq!(found.len(), want.len(), "{searched}");
    for (f, w) in found.iter().zip(want) {
        assert_eq!(serde_json::from_value::<Vec<i64>>(f["ids"].clone()).unwrap(), ids(&w["ids"]));
        assert!((f["score"].as_f64().unwrap() - w["score"].as_f64().unwrap()).abs() < 1e-5, "{f} vs {w}");
    }
    // Greedy still obeys the forced first and last tokens.
    let greedy = ok(&mut s, &format!("%generate \"{text}\" --beams 1 --max-tokens 5"));
    let generated: Vec<i64> = serde_json::from_value(greedy["generated_ids"].clone()).unwrap();
    assert_eq!((generated.len(), generated[0], generated[4]), (5, 0, 2), "forced <s> first and </s> last: {generated:?}");
    assert!(fail(&mut s, &format!("%generate \"{text}\" --beams 0")).message.contains("at least 1"));
    // The attention explorer chooses among the three attentions; the encoder's 3 layers
    // are reachable though the decoder has 2.
    let (outputs, result) = run(&mut s, &format!("%explore attention \"{text}\""));
    result.unwrap();
    let Some(Output::Panel(panel)) = outputs.iter().find(|o| matches!(o, Output::Panel(_))) else { panic!() };
    let panel = panel.clone();
    assert!(panel.picture.plain().starts_with("cross attention of layer 0"), "{}", panel.picture.plain());
    event(&mut s, &panel.id, set("kind", Setting::Choice("encoder".into()))).1.unwrap();
    event(&mut s, &panel.id, set("layer", Setting::Number(2.0))).1.unwrap();
    let (panels, result) = event(&mut s, &panel.id, set("head", Setting::Number(1.0)));
    result.unwrap();
    assert!(panels.last().unwrap().picture.plain().starts_with("encoder attention of layer 2, head 1"), "{}", panels.last().unwrap().picture.plain());
    assert!(event(&mut s, &panel.id, set("kind", Setting::Choice("sideways".into()))).1.unwrap_err().message.contains("sideways"));
    // LoRA finds BART's attention projections; a save keeps the generation config.
    assert_eq!(ok(&mut s, "%lora r=2")["layers"].as_array().unwrap().len(), 2 * (3 + 2 * 2), "q_proj and v_proj of 3 + 2×2 attentions");
    ok(&mut s, "%lora drop");
    let saved = common::scratch("session-bart-save");
    ok(&mut s, &format!("%save {} --hf", saved.display()));
    let generation: Value = serde_json::from_str(&std::fs::read_to_string(saved.join("generation_config.json")).unwrap()).unwrap();
    assert_eq!((generation["num_beams"].as_i64(), generation["forced_bos_token_id"].as_i64()), (Some(4), Some(0)));

    // A BART from scratch learns to sort.
    let mut s = Session::new();
    ok(&mut s, "%device cpu\n%seed 0\n%data synth sort --length 4 --symbols 6 --seq2seq");
    assert_eq!(ok(&mut s, "%model bart --layers 2 --decoder-layers 2 --heads 4 --dim 32")["model_type"], "bart");
    ok(&mut s, "%set batch=32 lr=3e-3 warmup=0 eval_every=0");
    let before = ok(&mut s, "%eval")["loss"].as_f64().unwrap();
    ok(&mut s, "%train 150");
    let after = ok(&mut s, "%eval")["loss"].as_f64().unwrap();
    assert!(after < 0.25 * before, "sorting pairs: validation loss {before} → {after}");

    // Marian's two SentencePiece files are not a tokenizer tchlab reads: refused, saying how.
    let marian = common::scratch("session-marian-spm");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(common::fixtures().join("marian").join(file), marian.join(file)).unwrap();
    }
    std::fs::write(marian.join("source.spm"), b"not read").unwrap();
    let e = fail(&mut s, &format!("%load {}", marian.display()));
    assert!(e.message.contains("source.spm") && e.message.contains("tokenizer.json"), "{}", e.message);
}
