//! ROUGE and BLEU against the packages people report them with: `rouge_score` 0.1.2
//! (ROUGE-1, ROUGE-2, ROUGE-L, ROUGE-Lsum per example, with and without its Porter
//! stemmer, and the stemmer itself against NLTK's on a vocabulary of English words) and
//! `sacrebleu.corpus_bleu` with its defaults (score, n-gram counts and totals, brevity
//! penalty, lengths), on texts with punctuation, numbers, HTML entities, several
//! sentences, text outside ASCII, repeated words and empty predictions.

mod common;

use serde_json::json;
use tchlab::metrics::{corpus_bleu, porter, rouge_l, rouge_lsum, rouge_n};

const PAIRS: &[(&str, &str)] = &[
    ("The cat sat on the mat.", "the cat is on the mat"),
    ("A quick brown fox jumps over the lazy dog.\nIt ran away.", "A fast brown fox jumped over a lazy dog.\nThen it ran away, quickly."),
    ("Prices rose 3.5% to $1,204.50 on Monday (a record).", "Prices rose 3.5 % to $ 1,204.50 on Monday, a record."),
    ("He said &quot;no&quot; &amp; left - quickly - at 10-11pm.", "He said \"no\" & left quickly at 10-11 pm."),
    ("Straße naïve café 東京 — déjà vu", "strasse naive cafe tokyo deja vu"),
    ("the the the the the the the", "the cat the mat the end"),
    ("", "something was expected here"),
    ("word", ""),
    ("Summaries have\nmany sentences\n\nwith blank lines between", "Summaries have many\nsentences with blank\nlines"),
    ("It's a well-known fact that mother-in-law jokes aren't funny.", "It is well known that mother in law jokes are not funny."),
    // Several longest common subsequences: which one rouge_score's backtrack takes decides
    // ROUGE-Lsum, as the tokens each sentence uses up are counted.
    ("b a c\na b c a", "a b c\nc a b a c"),
    ("x y x y\ny x", "y x y x\nx y y"),
    ("b a", "a b\nb"),
    // Words the stemmer conflates, and some it must not.
    ("The runners were running happily towards generalizations", "a runner runs happy toward the generalization"),
    ("Relational databases; conditional probabilities, hopefulness", "relate the conditions hopefully, probably"),
];

/// Words whose stems test each step and NLTK's departures from Porter's paper.
const WORDS: &str = "caresses ponies ties caress cats feed agreed plastered bled motoring sing conflated troubled sized hopping \
    tanned falling hissing fizzed failing filing happy sky skies enjoy spy flies tried dying lying tying news innings outings cannings \
    howe proceed exceed succeed relational conditional rational valenci hesitanci digitizer conformabli radicalli differentli vileli \
    analogousli vietnamization predication operator feudalism decisiveness hopefulness callousness formaliti sensitiviti sensibiliti \
    triplicate formative formalize electriciti electrical hopeful goodness revival allowance inference airliner gyroscopic adjustable \
    defensible irritant replacement adjustment dependent adoption homologou communism activate angulariti homologous effective \
    bowdlerize probate rate cease controll roll generalizations oscillators analogies archaeology apology yyyy syzygy toy \
    crying played plays quickly fully fulli ology theology anthologies ies ied tied 1990s b2b abc123ing";

#[test]
fn the_porter_stemmer_equals_nltks() {
    let stems: Vec<String> = WORDS.split_whitespace().map(porter::stem).collect();
    let dir = common::scratch("porter");
    std::fs::write(dir.join("stems.json"), json!({"words": WORDS.split_whitespace().collect::<Vec<_>>(), "stems": stems}).to_string()).unwrap();
    let script = r#"
import json, sys
from nltk.stem import porter
ours = json.load(open(sys.argv[1] + "/stems.json"))
stemmer = porter.PorterStemmer()
wrong = [(w, s, stemmer.stem(w)) for w, s in zip(ours["words"], ours["stems"]) if stemmer.stem(w) != s]
assert not wrong, f"(word, ours, NLTK's): {wrong}"
"#;
    common::python_agrees(script, &dir);
}

#[test]
fn rouge_and_bleu_equal_rouge_score_and_sacrebleu() {
    let mut rows = vec![];
    for (prediction, target) in PAIRS {
        let score = |s: tchlab::metrics::Score| json!([s.precision, s.recall, s.fmeasure]);
        for stemmer in [false, true] {
            rows.push(json!({
                "prediction": prediction, "target": target, "stemmer": stemmer,
                "rouge1": score(rouge_n(target, prediction, 1, stemmer)), "rouge2": score(rouge_n(target, prediction, 2, stemmer)),
                "rougeL": score(rouge_l(target, prediction, stemmer)), "rougeLsum": score(rouge_lsum(target, prediction, stemmer)),
            }));
        }
    }
    let predictions: Vec<String> = PAIRS.iter().map(|p| p.0.to_string()).collect();
    // Two references each: the pair's target and a variant, to exercise the closest length
    // and the clipping by the most frequent reference.
    let references: Vec<Vec<String>> = PAIRS.iter().map(|p| vec![p.1.to_string(), format!("{} indeed", p.1.to_uppercase())]).collect();
    let bleu = corpus_bleu(&predictions, &references);
    let one = corpus_bleu(&predictions[..3], &references[..3].iter().map(|r| vec![r[0].clone()]).collect::<Vec<_>>());
    // No matching 3- or 4-grams: the exponential smoothing decides the score.
    let short = corpus_bleu(&["a b c d".to_string(), "x y".to_string()], &[vec!["a b d c".to_string()], vec!["y x z".to_string()]]);
    assert!(short.counts[2] == 0 && short.counts[3] == 0 && short.score > 0.0, "{short:?}");
    let dir = common::scratch("metrics");
    // The means %eval reports: exact match, ROUGE F-measures per example averaged.
    let targets: Vec<String> = PAIRS.iter().map(|p| p.1.to_string()).chain(["same".to_string()]).collect();
    let scores = tchlab::metrics::score_texts(&targets, &predictions.iter().cloned().chain([" same ".to_string()]).collect::<Vec<_>>(), false);
    assert_eq!((scores.examples, scores.exact_match), (PAIRS.len() + 1, 1.0 / (PAIRS.len() + 1) as f64));
    let mean = |f: &dyn Fn(&str, &str) -> f64| (PAIRS.iter().map(|p| f(p.1, p.0)).sum::<f64>() + f("same", " same ")) / (PAIRS.len() + 1) as f64;
    assert!((scores.rouge2 - mean(&|t, p| rouge_n(t, p, 2, false).fmeasure)).abs() < 1e-12);
    assert!((scores.rouge_l - mean(&|t, p| rouge_l(t, p, false).fmeasure)).abs() < 1e-12);
    let stemmed = tchlab::metrics::score_texts(&targets, &predictions, true);
    assert!(stemmed.stemmed && stemmed.rouge1 > scores.rouge1 - 1e-12, "stemming only merges words: {} vs {}", stemmed.rouge1, scores.rouge1);
    let ours = json!({"rows": rows, "references": references, "bleu": bleu, "bleu_one": one, "bleu_short": short});
    std::fs::write(dir.join("ours.json"), ours.to_string()).unwrap();
    let script = r#"
import json, sys, sacrebleu
from rouge_score import rouge_scorer
ours = json.load(open(sys.argv[1] + "/ours.json"))
scorers = {stem: rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=stem) for stem in (False, True)}
for row in ours["rows"]:
    theirs = scorers[row["stemmer"]].score(row["target"], row["prediction"])
    for kind, s in theirs.items():
        for mine, their in zip(row[kind], (s.precision, s.recall, s.fmeasure)):
            assert abs(mine - their) < 1e-9, (kind, row["prediction"], row[kind], s)
hyps = [r["prediction"] for r in ours["rows"] if not r["stemmer"]]
def check(mine, hyps, refs):
    streams = [list(s) for s in zip(*refs)]
    b = sacrebleu.corpus_bleu(hyps, streams)
    assert abs(mine["score"] - b.score) < 1e-6, (mine, b.score)
    assert mine["counts"] == list(b.counts) and mine["totals"] == list(b.totals), (mine, b.counts, b.totals)
    assert abs(mine["bp"] - b.bp) < 1e-9 and mine["sys_len"] == b.sys_len and mine["ref_len"] == b.ref_len, (mine, b.bp, b.sys_len, b.ref_len)
check(ours["bleu"], hyps, ours["references"])
check(ours["bleu_one"], hyps[:3], [r[:1] for r in ours["references"][:3]])
check(ours["bleu_short"], ["a b c d", "x y"], [["a b d c"], ["y x z"]])
"#;
    common::python_agrees(script, &dir);
}
