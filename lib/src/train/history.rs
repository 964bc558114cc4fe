//! What happened during training, step by step: every step's metrics, every
//! evaluation, every hyperparameter change; exportable as JSONL and CSV.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Validation metrics. Language models have `perplexity`; classifiers `accuracy`,
/// `macro_f1` and a confusion matrix (rows: true class, columns: predicted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct EvalMetrics {
    /// Mean validation loss.
    pub loss: f64,
    /// `exp(loss)`, for language models.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub perplexity: Option<f64>,
    /// Fraction classified correctly.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accuracy: Option<f64>,
    /// Unweighted mean of the per-class F1 scores.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub macro_f1: Option<f64>,
    /// Counts by (true class, predicted class).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub confusion: Option<Vec<Vec<u64>>>,
    /// Class names, in the confusion matrix's order.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub labels: Option<Vec<String>>,
    /// On source → target pairs, what the model generates for the validation sources,
    /// scored against their targets.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub generated: Option<crate::metrics::TextScores>,
}

impl EvalMetrics {
    /// Classification metrics from a confusion matrix.
    pub fn classification(loss: f64, confusion: Vec<Vec<u64>>, labels: Vec<String>) -> Self {
        let n = confusion.len();
        let total: u64 = confusion.iter().flatten().sum();
        let correct: u64 = (0..n).map(|i| confusion[i][i]).sum();
        let f1s: Vec<f64> = (0..n)
            .map(|c| {
                let tp = confusion[c][c] as f64;
                let predicted: u64 = (0..n).map(|t| confusion[t][c]).sum();
                let actual: u64 = confusion[c].iter().sum();
                if predicted + actual == 0 {
                    0.0
                } else {
                    2.0 * tp / (predicted + actual) as f64
                }
            })
            .collect();
        EvalMetrics {
            loss,
            accuracy: Some(if total == 0 { 0.0 } else { correct as f64 / total as f64 }),
            macro_f1: Some(if n == 0 { 0.0 } else { f1s.iter().sum::<f64>() / n as f64 }),
            confusion: Some(confusion),
            labels: Some(labels),
            ..Default::default()
        }
    }
}

/// One optimiser step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepRecord {
    /// The step's number (the first is 1).
    pub step: i64,
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Input tokens per second over the step.
    pub tokens_per_s: f64,
    /// Seconds of training so far, this step included.
    pub wall_time: f64,
    /// Validation metrics, when the step was followed by an evaluation.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val: Option<EvalMetrics>,
}

/// A hyperparameter change, effective from the step after `step`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Change {
    /// Steps taken when the change was made.
    pub step: i64,
    /// The hyperparameter.
    pub key: String,
    /// Its value before.
    pub from: String,
    /// Its value after.
    pub to: String,
}

/// A run's history.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct History {
    /// Every step, in order.
    pub steps: Vec<StepRecord>,
    /// Every hyperparameter change, in order.
    pub changes: Vec<Change>,
}

impl History {
    /// Forgets steps and changes after `step`.
    pub fn truncate(&mut self, step: i64) {
        self.steps.retain(|s| s.step <= step);
        self.changes.retain(|c| c.step <= step);
    }

    /// The history as JSON lines: steps and changes in the order they happened, each
    /// with an `event` field (`step` or `set`).
    pub fn to_jsonl(&self) -> String {
        let mut events: Vec<(i64, u8, serde_json::Value)> = vec![];
        for s in &self.steps {
            let mut v = serde_json::to_value(s).expect("serializes");
            v["event"] = "step".into();
            events.push((s.step, 1, v));
        }
        for c in &self.changes {
            let mut v = serde_json::to_value(c).expect("serializes");
            v["event"] = "set".into();
            // A change after step N happened before step N + 1.
            events.push((c.step, 2, v));
        }
        events.sort_by_key(|(step, order, _)| (*step, *order));
        events.into_iter().map(|(_, _, v)| format!("{v}\n")).collect()
    }

    /// The steps as CSV, one row per step; validation columns are empty where no
    /// evaluation followed.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("step,loss,lr,grad_norm,tokens_per_s,wall_time,val_loss,val_perplexity,val_accuracy,val_macro_f1\n");
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        for s in &self.steps {
            let val = s.val.as_ref();
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
                s.step,
                s.loss,
                s.lr,
                s.grad_norm,
                s.tokens_per_s,
                s.wall_time,
                opt(val.map(|v| v.loss)),
                opt(val.and_then(|v| v.perplexity)),
                opt(val.and_then(|v| v.accuracy)),
                opt(val.and_then(|v| v.macro_f1)),
            ));
        }
        out
    }

    /// Writes the history to `path` as JSONL (`.jsonl`) or CSV (`.csv`), atomically.
    pub fn export(&self, path: &Path) -> Result<()> {
        let text = match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => self.to_csv(),
            Some("jsonl") => self.to_jsonl(),
            _ => return Err(crate::Error::format(path, "export the history as .jsonl or .csv")),
        };
        crate::atomic::write(path, |w| w.write_all(text.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: i64) -> StepRecord {
        StepRecord { step: n, loss: 1.0 / n as f64, lr: 0.1, grad_norm: 2.0, tokens_per_s: 100.0, wall_time: n as f64, val: None }
    }

    #[test]
    fn exports_interleave_changes_and_keep_every_column() {
        let mut h = History { steps: vec![step(1), step(2)], changes: vec![Change { step: 1, key: "lr".into(), from: "0.1".into(), to: "0.05".into() }] };
        h.steps[1].val = Some(EvalMetrics { loss: 0.7, perplexity: Some(0.7f64.exp()), ..Default::default() });
        let lines: Vec<serde_json::Value> = h.to_jsonl().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.iter().map(|l| l["event"].as_str().unwrap()).collect::<Vec<_>>(), ["step", "set", "step"]);
        assert_eq!(lines[2]["val"]["loss"], 0.7);
        let csv = h.to_csv();
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(rows.len(), 3);
        assert!(rows[2].starts_with("2,0.5,0.1,2,100,2,0.7,"), "{}", rows[2]);
    }

    #[test]
    fn macro_f1_averages_classes() {
        // class 0: tp 3, fp 1, fn 0 -> F1 6/7; class 1: tp 1, fp 0, fn 1 -> F1 2/3
        let m = EvalMetrics::classification(0.5, vec![vec![3, 0], vec![1, 1]], vec!["a".into(), "b".into()]);
        assert_eq!(m.accuracy, Some(0.8));
        assert!((m.macro_f1.unwrap() - (6.0 / 7.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }
}
