//! Scores for generated text against references: ROUGE-N, ROUGE-L and ROUGE-Lsum as
//! Google's `rouge_score` 0.1.2 computes them (what Hugging Face `evaluate` wraps), corpus
//! BLEU as `sacrebleu.corpus_bleu` computes it by default (the 13a tokeniser, exponential
//! smoothing, the brevity penalty against the closest reference length), and exact match.
//! Facts in `../shared/NOTES-encoder-decoder.md` §5; tests hold them to those packages.
//! With `stemmer`, ROUGE stems the tokens longer than three letters as `rouge_score`'s
//! `use_stemmer=True` does, with NLTK's Porter stemmer ([`porter`]).

pub mod porter;

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

/// Precision, recall and F1 of one score.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, schemars::JsonSchema)]
pub struct Score {
    /// Of the prediction's units, the share the reference has.
    pub precision: f64,
    /// Of the reference's units, the share the prediction has.
    pub recall: f64,
    /// Their harmonic mean (0 when both are 0).
    pub fmeasure: f64,
}

impl Score {
    fn of(overlap: f64, predicted: f64, referenced: f64) -> Self {
        let (precision, recall) = (overlap / predicted.max(1.0), overlap / referenced.max(1.0));
        let fmeasure = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        Score { precision, recall, fmeasure }
    }
}

/// `rouge_score`'s tokens: lower case, every run of characters other than `a-z0-9` a
/// separator (so letters outside ASCII are dropped, as there); with `stemmer`, those
/// longer than three letters stemmed.
pub fn rouge_tokens(text: &str, stemmer: bool) -> Vec<String> {
    let lower = text.to_lowercase();
    let tokens = lower.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit())).filter(|t| !t.is_empty());
    tokens.map(|t| if stemmer && t.len() > 3 { porter::stem(t) } else { t.to_string() }).collect()
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    if n > 0 && tokens.len() >= n {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// ROUGE-N of `prediction` against `target`: overlapping n-grams, clipped by count.
pub fn rouge_n(target: &str, prediction: &str, n: usize, stemmer: bool) -> Score {
    let (t, p) = (rouge_tokens(target, stemmer), rouge_tokens(prediction, stemmer));
    let (tg, pg) = (ngrams(&t, n), ngrams(&p, n));
    let overlap: usize = tg.iter().map(|(g, &c)| c.min(pg.get(g).copied().unwrap_or(0))).sum();
    Score::of(overlap as f64, pg.values().sum::<usize>() as f64, tg.values().sum::<usize>() as f64)
}

/// The table of longest-common-subsequence lengths of `a` and `b`.
fn lcs_table(a: &[String], b: &[String]) -> Vec<Vec<usize>> {
    let mut t = vec![vec![0; b.len() + 1]; a.len() + 1];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            t[i][j] = if a[i - 1] == b[j - 1] { t[i - 1][j - 1] + 1 } else { t[i - 1][j].max(t[i][j - 1]) };
        }
    }
    t
}

/// ROUGE-L: the longest common subsequence of the token lists.
pub fn rouge_l(target: &str, prediction: &str, stemmer: bool) -> Score {
    let (t, p) = (rouge_tokens(target, stemmer), rouge_tokens(prediction, stemmer));
    if t.is_empty() || p.is_empty() {
        return Score::default();
    }
    let lcs = lcs_table(&t, &p)[t.len()][p.len()];
    Score::of(lcs as f64, p.len() as f64, t.len() as f64)
}

/// The indices into `reference` of one longest common subsequence with `candidate`,
/// chosen by `rouge_score`'s backtrack (which decides ties, so which tokens count).
fn lcs_indices(reference: &[String], candidate: &[String]) -> Vec<usize> {
    let t = lcs_table(reference, candidate);
    let (mut i, mut j, mut out) = (reference.len(), candidate.len(), vec![]);
    while i > 0 && j > 0 {
        if reference[i - 1] == candidate[j - 1] {
            out.push(i - 1);
            i -= 1;
            j -= 1;
        } else if t[i][j - 1] > t[i - 1][j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
    out
}

/// ROUGE-Lsum: summary-level LCS over newline-separated sentences.
pub fn rouge_lsum(target: &str, prediction: &str, stemmer: bool) -> Score {
    let sentences = |text: &str| -> Vec<Vec<String>> { text.split('\n').filter(|s| !s.is_empty()).map(|s| rouge_tokens(s, stemmer)).collect() };
    let (reference, candidate) = (sentences(target), sentences(prediction));
    let (m, n): (usize, usize) = (reference.iter().map(Vec::len).sum(), candidate.iter().map(Vec::len).sum());
    if m == 0 || n == 0 {
        return Score::default();
    }
    let count = |sents: &[Vec<String>]| {
        let mut c: HashMap<String, usize> = HashMap::new();
        for t in sents.iter().flatten() {
            *c.entry(t.clone()).or_insert(0) += 1;
        }
        c
    };
    let (mut left_r, mut left_c) = (count(&reference), count(&candidate));
    let mut hits = 0usize;
    for r in &reference {
        let mut union: Vec<usize> = candidate.iter().flat_map(|c| lcs_indices(r, c)).collect();
        union.sort_unstable();
        union.dedup();
        for t in union.iter().map(|&i| &r[i]) {
            let (cr, cc) = (left_r.get(t).copied().unwrap_or(0), left_c.get(t).copied().unwrap_or(0));
            if cr > 0 && cc > 0 {
                hits += 1;
                left_r.insert(t.clone(), cr - 1);
                left_c.insert(t.clone(), cc - 1);
            }
        }
    }
    Score::of(hits as f64, n as f64, m as f64)
}

/// sacrebleu's 13a tokeniser (mteval-v13a): punctuation and symbols split off, periods and
/// commas unless between digits, a dash after a digit.
pub fn tokenize_13a(text: &str) -> String {
    static RULES: OnceLock<Vec<(Regex, &str)>> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        [(r"([\{-~\[-` -&\(-\+:-@/])", " $1 "), (r"([^0-9])([\.,])", "$1 $2 "), (r"([\.,])([^0-9])", " $1 $2"), (r"([0-9])(-)", "$1 $2 ")]
            .into_iter()
            .map(|(pattern, replacement)| (Regex::new(pattern).expect("a valid pattern"), replacement))
            .collect()
    });
    let mut line = text.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (pattern, replacement) in rules {
        line = pattern.replace_all(&line, *replacement).into_owned();
    }
    python_split(&line).join(" ")
}

/// Python's `str.split()`: Unicode whitespace and the separators `\x1c`–`\x1f`.
fn python_split(text: &str) -> Vec<&str> {
    text.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)).filter(|t| !t.is_empty()).collect()
}

/// Python's `str.rstrip()`.
fn python_rstrip(text: &str) -> &str {
    text.trim_end_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Corpus BLEU with its parts, as sacrebleu reports them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Bleu {
    /// The score, 0–100.
    pub score: f64,
    /// Matching n-grams for n = 1..4, clipped by the references.
    pub counts: [usize; 4],
    /// The predictions' n-grams for n = 1..4.
    pub totals: [usize; 4],
    /// The brevity penalty.
    pub bp: f64,
    /// The predictions' tokens.
    pub sys_len: usize,
    /// The references' tokens, the closest reference's for each prediction.
    pub ref_len: usize,
}

/// Corpus BLEU of `predictions`, each with its references (`references[i]` for
/// `predictions[i]`; any number each).
pub fn corpus_bleu(predictions: &[String], references: &[Vec<String>]) -> Bleu {
    let (mut counts, mut totals, mut sys_len, mut ref_len) = ([0usize; 4], [0usize; 4], 0, 0);
    for (prediction, refs) in predictions.iter().zip(references) {
        let hyp: Vec<String> = python_split(&tokenize_13a(python_rstrip(prediction))).into_iter().map(str::to_string).collect();
        let refs: Vec<Vec<String>> = refs.iter().map(|r| python_split(&tokenize_13a(python_rstrip(r))).into_iter().map(str::to_string).collect()).collect();
        sys_len += hyp.len();
        // The closest reference length; ties go to the shorter.
        ref_len += refs.iter().map(Vec::len).min_by_key(|&l| (l.abs_diff(hyp.len()), l)).unwrap_or(0);
        for n in 1..=4 {
            let mut most: HashMap<&[String], usize> = HashMap::new();
            for r in &refs {
                for (g, c) in ngrams(r, n) {
                    let best = most.entry(g).or_insert(0);
                    *best = (*best).max(c);
                }
            }
            for (g, c) in ngrams(&hyp, n) {
                totals[n - 1] += c;
                counts[n - 1] += c.min(most.get(g).copied().unwrap_or(0));
            }
        }
    }
    let bp = if sys_len >= ref_len {
        1.0
    } else if sys_len > 0 {
        (1.0 - ref_len as f64 / sys_len as f64).exp()
    } else {
        0.0
    };
    let score = if counts.iter().all(|&c| c == 0) {
        0.0
    } else {
        let (mut smooth, mut precisions) = (1.0, [0.0f64; 4]);
        for n in 0..4 {
            if totals[n] == 0 {
                break;
            }
            precisions[n] = if counts[n] == 0 {
                smooth *= 2.0;
                100.0 / (smooth * totals[n] as f64)
            } else {
                100.0 * counts[n] as f64 / totals[n] as f64
            };
        }
        let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
        bp * (precisions.iter().map(|&p| log(p)).sum::<f64>() / 4.0).exp()
    };
    Bleu { score, counts, totals, bp, sys_len, ref_len }
}

/// Whether the prediction is the target, ignoring surrounding whitespace.
pub fn exact_match(target: &str, prediction: &str) -> bool {
    target.trim() == prediction.trim()
}

/// Generated texts scored against their targets: means over the examples of exact match
/// and of the ROUGE F-measures (`rouge_score` per example, averaged, as `evaluate`'s
/// `use_aggregator=False`), and corpus BLEU.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct TextScores {
    /// Examples scored.
    pub examples: usize,
    /// Share of predictions equal to their target.
    pub exact_match: f64,
    /// Whether ROUGE stemmed the tokens (`use_stemmer=True`).
    pub stemmed: bool,
    /// Mean ROUGE-1 F-measure.
    pub rouge1: f64,
    /// Mean ROUGE-2 F-measure.
    pub rouge2: f64,
    /// Mean ROUGE-L F-measure.
    pub rouge_l: f64,
    /// Corpus BLEU, 0–100.
    pub bleu: f64,
    /// The first few `(target, prediction)` pairs, to look at.
    pub samples: Vec<(String, String)>,
}

/// How many pairs [`TextScores::samples`] shows.
const SAMPLES: usize = 5;

/// Scores `predictions[i]` against `targets[i]`, ROUGE's tokens stemmed with `stemmer`.
pub fn score_texts(targets: &[String], predictions: &[String], stemmer: bool) -> TextScores {
    let n = targets.len().min(predictions.len());
    let mean = |f: &dyn Fn(&str, &str) -> f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        targets.iter().zip(predictions).map(|(t, p)| f(t, p)).sum::<f64>() / n as f64
    };
    let references: Vec<Vec<String>> = targets.iter().take(n).map(|t| vec![t.clone()]).collect();
    TextScores {
        examples: n,
        exact_match: mean(&|t, p| f64::from(u8::from(exact_match(t, p)))),
        stemmed: stemmer,
        rouge1: mean(&|t, p| rouge_n(t, p, 1, stemmer).fmeasure),
        rouge2: mean(&|t, p| rouge_n(t, p, 2, stemmer).fmeasure),
        rouge_l: mean(&|t, p| rouge_l(t, p, stemmer).fmeasure),
        bleu: corpus_bleu(&predictions[..n], &references).score,
        samples: targets.iter().zip(predictions).take(SAMPLES).map(|(t, p)| (t.clone(), p.clone())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_drops_what_is_not_ascii_letters_or_digits() {
        assert_eq!(rouge_tokens("The Straße, 3.14 — naïve!", false), ["the", "stra", "e", "3", "14", "na", "ve"]);
        assert_eq!(rouge_tokens("Cats were running", true), ["cat", "were", "run"], "only tokens of four letters or more are stemmed");
        let s = rouge_n("the cat sat on the mat", "the cat on the mat", 2, false);
        assert!((s.precision - 0.75).abs() < 1e-12 && (s.recall - 0.6).abs() < 1e-12);
        assert_eq!(rouge_l("", "anything", false), Score::default());
    }

    #[test]
    fn thirteen_a_splits_punctuation_but_not_numbers() {
        assert_eq!(tokenize_13a("Hello, world! It's 3.5-4 km (approx.)."), "Hello , world ! It's 3.5 - 4 km ( approx . ) .");
        assert_eq!(tokenize_13a("a&amp;b &lt;tag&gt;"), "a & b < tag >");
    }
}
