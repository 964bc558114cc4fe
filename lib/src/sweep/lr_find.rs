//! The learning-rate range test (Smith, 2017; fastai's `lr_find`): the loss against an
//! exponentially rising learning rate, and the rate to start from.

use serde::Serialize;

use super::from_start_and_back;
use crate::error::{invalid, Error, Result};
use crate::train::Trainer;

/// The learning-rate range test (Smith, 2017; fastai's `lr_find`).
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct LrFind {
    /// Learning rates tried, one per step, rising exponentially.
    pub lrs: Vec<f64>,
    /// Smoothed (debiased EMA) loss at each.
    pub losses: Vec<f64>,
    /// The suggested learning rate: fastai's "valley", two thirds down the longest
    /// stretch over which the smoothed loss keeps falling.
    pub suggestion: Option<f64>,
}

/// Raises the learning rate from `start` to `end` over at most `steps` steps,
/// stopping early once the smoothed loss is four times its best; then puts the trainer
/// back as it was.
pub fn lr_find(trainer: &mut Trainer, start: f64, end: f64, steps: u64) -> Result<LrFind> {
    if !(start > 0.0 && end > start && end.is_finite()) {
        return invalid!("the range must rise from a positive start: got {start} to {end}");
    }
    if steps < 5 {
        return invalid!("--steps must be at least 5 for a range test");
    }
    from_start_and_back(trainer, |t| Ok((run_lr_find(t, start, end, steps)?, false)))
}

fn run_lr_find(trainer: &mut Trainer, start: f64, end: f64, steps: u64) -> Result<LrFind> {
    trainer.set("warmup", "0")?;
    trainer.set("schedule", "constant")?;
    let (mut lrs, mut losses) = (vec![], vec![]);
    let (mut average, mut weight, mut best) = (0.0, 1.0, f64::INFINITY);
    for i in 0..steps {
        let lr = start * (end / start).powf(i as f64 / (steps - 1) as f64);
        trainer.set("lr", &lr.to_string())?;
        let loss = match trainer.step() {
            Ok(r) => r.loss,
            Err(Error::NonFinite(_)) => break,
            Err(e) => return Err(e),
        };
        average = 0.98 * average + 0.02 * loss;
        weight *= 0.98;
        let smoothed = average / (1.0 - weight);
        lrs.push(lr);
        losses.push(smoothed);
        best = best.min(smoothed);
        if smoothed > 4.0 * best {
            break;
        }
    }
    let suggestion = valley(&losses).map(|i| lrs[i]);
    Ok(LrFind { lrs, losses, suggestion })
}

/// fastai's valley: the longest decreasing subsequence of the losses, and the point two
/// thirds along it.
fn valley(losses: &[f64]) -> Option<usize> {
    let n = losses.len();
    if n < 3 {
        return None;
    }
    let mut longest = vec![1usize; n];
    let (mut max_start, mut max_end) = (0, 0);
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && longest[i] < longest[j] + 1 {
                longest[i] = longest[j] + 1;
            }
        }
        if longest[max_end] < longest[i] {
            max_end = i;
            max_start = max_end + 1 - longest[max_end];
        }
    }
    let sections = (max_end - max_start) as f64 / 3.0;
    Some((max_start + sections as usize + (sections / 2.0) as usize).min(n - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_valley_is_two_thirds_down_the_longest_fall() {
        let losses = [5.0, 4.0, 3.0, 2.0, 1.0, 0.9, 0.8, 3.0, 9.0];
        // Falling from index 0 to 6: sections = 2, the point is 0 + 2 + 1.
        assert_eq!(valley(&losses), Some(3));
    }
}
