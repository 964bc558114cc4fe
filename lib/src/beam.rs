//! Beam search over a decoder, as `transformers`' `generate(num_beams=N,
//! do_sample=False)` computes it (the vectorised search of 4.50 and later, the same in
//! 5.x): each step scores every continuation of every running beam by its summed
//! log-probability, keeps the best `2N` candidates, sets aside those that end (a stop
//! token, or the length limit) among the best `N` as finished hypotheses scored by
//! `sum / length^length_penalty`, and continues the best `N` that do not end. The loop
//! follows the plain-loop reference in `../shared/reference/verify_beam.py`, checked
//! against transformers on 144 settings; the scores are float32 as there, with the same
//! −1e9 sentinels and libtorch's `topk` for ties.
//!
//! The beams run as one batch through the key/value cache, which is reordered after each
//! step to follow the beams that continue. An encoder–decoder reads the prompt as its
//! source, encoded once and copied to every beam, as transformers does.

use tch::{Kind, Tensor};

use crate::error::{invalid, Result};
use crate::generation_config::Constraints;
pub use crate::generation_config::EarlyStopping;
use crate::models::{ForwardOptions, Model};

/// How to search.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamOptions {
    /// The number of beams, `N`.
    pub beams: usize,
    /// The most tokens to add.
    pub max_new_tokens: usize,
    /// The exponent of the length a finished hypothesis's summed log-probability is
    /// divided by: above 0 favours longer ones, below 0 shorter.
    pub length_penalty: f64,
    /// When to stop.
    pub early_stopping: EarlyStopping,
    /// How many hypotheses to return, best first (at most `beams`).
    pub returns: usize,
    /// Tokens that end a hypothesis.
    pub stop_ids: Vec<i64>,
    /// The logits processors: the n-gram ban, forced tokens, bad words, a minimum
    /// length, renormalisation.
    pub constraints: Constraints,
}

impl Default for BeamOptions {
    fn default() -> Self {
        BeamOptions {
            beams: 4,
            max_new_tokens: 32,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            returns: 1,
            stop_ids: vec![],
            constraints: Constraints::default(),
        }
    }
}

/// One finished hypothesis.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Hypothesis {
    /// The new ids (ending with the stop token when one came).
    pub ids: Vec<i64>,
    /// Its summed log-probability divided by its length to the length penalty.
    pub score: f64,
}

/// The most beams a search keeps.
pub const MAX_BEAMS: usize = 64;

/// transformers' score for a beam that must not be chosen.
const DEAD: f64 = -1.0e9;

/// Searches for the best continuations of `prompt`; returns `opts.returns` hypotheses,
/// best first.
pub fn beam_search(model: &Model, prompt: &[i64], opts: &BeamOptions) -> Result<Vec<Hypothesis>> {
    let n = opts.beams;
    crate::generate::check_prompt(model, prompt)?;
    if !(2..=MAX_BEAMS).contains(&n) {
        return invalid!("--beams must be between 2 and {MAX_BEAMS}, got {n}");
    }
    if !(1..=n).contains(&opts.returns) {
        return invalid!("a search with {n} beams returns between 1 and {n} hypotheses, not {}", opts.returns);
    }
    if !opts.length_penalty.is_finite() {
        return invalid!("--length-penalty must be a finite number, got {}", opts.length_penalty);
    }
    let vocab = model.config().vocab_size();
    let keep = (2.max(1 + opts.stop_ids.len()) * n) as i64;
    if keep > vocab {
        return invalid!("beam search with {n} beams takes the best {keep} of the continuations, more than the vocabulary's {vocab} tokens");
    }
    let (mut cache, prompt) = crate::generate::start(model, prompt)?;
    let prompt = prompt.as_slice();
    let max_length = prompt.len() + opts.max_new_tokens;
    let positions = model.config().max_positions() as usize;
    if max_length > positions {
        return invalid!(
            "the prompt ({} tokens) and --max-tokens {} need {max_length} positions; the model has {positions}: beam search does not slide its context",
            prompt.len(),
            opts.max_new_tokens
        );
    }
    let device = model.device();
    let p = prompt.len();
    let mut running: Vec<Vec<i64>> = vec![prompt.to_vec(); n];
    let mut running_score = Tensor::from_slice(&std::iter::once(0.0f32).chain(std::iter::repeat_n(DEAD as f32, n - 1)).collect::<Vec<_>>());
    let mut finished: Vec<(f64, Vec<i64>)> = vec![];
    let mut improvable = true;
    cache.reorder(&Tensor::zeros([n as i64], (Kind::Int64, device)))?;
    let mut input = Tensor::from_slice(prompt).unsqueeze(0).f_expand([n as i64, p as i64], false)?.to_device(device);
    let mut cur_len = p;
    tch::no_grad(|| -> Result<()> {
        loop {
            crate::interrupt::check("searching")?;
            let logits = model.forward(&input, None, &ForwardOptions::default(), Some(&mut cache))?.logits.expect("a language model has logits");
            let logp = logits.f_select(1, -1)?.f_to_kind(Kind::Float)?.f_log_softmax(-1, Kind::Float)?.f_to_device(tch::Device::Cpu)?;
            let logp = opts.constraints.apply(&running, logp, max_length, &opts.stop_ids)?;
            let scores = logp.f_add(&running_score.f_unsqueeze(1)?)?.f_reshape([-1])?;
            let (top_v, top_i) = scores.f_topk(keep, 0, true, true)?;
            let top_v = Vec::<f32>::try_from(&top_v)?;
            let top_i = Vec::<i64>::try_from(&top_i)?;
            let candidates: Vec<(usize, i64, bool)> = top_i
                .iter()
                .map(|&i| {
                    let (beam, token) = ((i / vocab) as usize, i % vocab);
                    (beam, token, opts.stop_ids.contains(&token) || running[beam].len() + 1 >= max_length)
                })
                .collect();
            let all_end = candidates.iter().all(|c| c.2);
            // The next running beams: the best n once the candidates that end are pushed down.
            let pushed: Vec<f32> = top_v.iter().zip(&candidates).map(|(&v, c)| if c.2 { v + DEAD as f32 } else { v }).collect();
            let (next_score, next) = Tensor::from_slice(&pushed).f_topk(n as i64, 0, true, true)?;
            let next = Vec::<i64>::try_from(&next)?;
            // Finished hypotheses: only candidates among the best n that end.
            if improvable && !(opts.early_stopping == EarlyStopping::AtOnce && finished.len() == n) {
                let length = ((cur_len + 1 - p) as f64).powf(opts.length_penalty);
                for (r, &(beam, token, ends)) in candidates.iter().enumerate().take(n) {
                    if ends {
                        let score = Tensor::from_slice(&[top_v[r]]).f_div_scalar(length)?.double_value(&[0]);
                        let mut seq = running[beam].clone();
                        seq.push(token);
                        finished.push((score, seq));
                    }
                }
                // Stable: on ties the older hypotheses stay ahead.
                finished.sort_by(|a, b| b.0.total_cmp(&a.0));
                finished.truncate(n);
            }
            let rows: Vec<i64> = next.iter().map(|&r| candidates[r as usize].0 as i64).collect();
            running = next
                .iter()
                .map(|&r| {
                    let (beam, token, _) = candidates[r as usize];
                    let mut seq = running[beam].clone();
                    seq.push(token);
                    seq
                })
                .collect();
            running_score = next_score;
            cur_len += 1;
            let length = if opts.early_stopping == EarlyStopping::Never && opts.length_penalty > 0.0 { max_length - p } else { cur_len - p };
            let best_possible = f64::from(running_score.double_value(&[0]) as f32) / (length as f64).powf(opts.length_penalty);
            if finished.len() == n && best_possible <= finished[n - 1].0 {
                improvable = false;
            }
            let full = opts.early_stopping == EarlyStopping::AtOnce && finished.len() == n;
            if !improvable || full || all_end {
                return Ok(());
            }
            cache.reorder(&Tensor::from_slice(&rows).to_device(device))?;
            let last: Vec<i64> = running.iter().map(|s| *s.last().expect("a beam holds the prompt")).collect();
            input = Tensor::from_slice(&last).unsqueeze(1).to_device(device);
        }
    })?;
    Ok(finished.into_iter().take(opts.returns).map(|(score, seq)| Hypothesis { ids: seq[p..].to_vec(), score }).collect())
}
