//! Text generation with any decoder (a model whose task is language modelling): greedy
//! at temperature 0, otherwise sampling with temperature, top-k and top-p (nucleus).
//! Each token runs the model once, on the new position only, thanks to the key/value
//! cache; each new id is handed to the caller as it is made, for streaming.
//!
//! An encoder–decoder reads the prompt as its source: the encoder runs once, and the
//! decoder generates from its start id, reading the encoder's output through the cache.
//!
//! Mirrors `transformers`' `GenerationMixin` for these options: greedy decoding gives
//! the same ids as `generate(do_sample=False)`.

use tch::{Kind, Tensor};

use crate::error::{invalid, Result};
use crate::generation_config::Constraints;
use crate::models::{ForwardOptions, KvCache, Model, Task};

/// How to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// The most tokens to add.
    pub max_new_tokens: usize,
    /// 0 (or anything below [`GREEDY_BELOW`]) for greedy; otherwise logits are divided
    /// by it before sampling.
    pub temperature: f64,
    /// Sample only among the `k` most likely tokens.
    pub top_k: Option<i64>,
    /// Sample only among the most likely tokens whose probabilities add up to `p`.
    pub top_p: Option<f64>,
    /// Seed for sampling; `None` continues libtorch's generator.
    pub seed: Option<u64>,
    /// Stop after any of these tokens (end of text, end of turn).
    pub stop_ids: Vec<i64>,
    /// The generation config's other processors (forced tokens, bad words, a minimum
    /// length).
    pub constraints: Constraints,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_new_tokens: 32, temperature: 0.0, top_k: None, top_p: None, seed: None, stop_ids: vec![], constraints: Constraints::default() }
    }
}

/// Continues `prompt` and returns the new ids (ending with the stop token when one was
/// produced). Past the model's context, the context slides over the latest tokens.
pub fn generate(model: &Model, prompt: &[i64], opts: &GenerateOptions) -> Result<Vec<i64>> {
    generate_streaming(model, prompt, opts, &mut |_| Ok(()))
}

/// [`generate`], calling `on_token` with each new id as soon as it is chosen; an error
/// from `on_token` stops generation and is returned.
pub fn generate_streaming(model: &Model, prompt: &[i64], opts: &GenerateOptions, on_token: &mut dyn FnMut(i64) -> Result<()>) -> Result<Vec<i64>> {
    check_prompt(model, prompt)?;
    if !(opts.temperature >= 0.0 && opts.temperature.is_finite()) {
        return invalid!("--temperature must be a finite number ≥ 0, got {}", opts.temperature);
    }
    if let Some(p) = opts.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return invalid!("--top-p must be in (0, 1], got {p}");
    }
    if let Some(k) = opts.top_k.filter(|&k| k < 1) {
        return invalid!("--top-k must be at least 1, got {k}");
    }
    if opts.max_new_tokens > MAX_NEW_TOKENS {
        return invalid!("--max-tokens must be at most {MAX_NEW_TOKENS}, got {}", opts.max_new_tokens);
    }
    let config = model.config();
    if let Some(seed) = opts.seed {
        tch::manual_seed(seed as i64);
    }
    let n_positions = config.max_positions() as usize;
    let device = model.device();
    let (mut cache, prompt) = start(model, prompt)?;
    let prompt = prompt.as_slice();
    if cache.source().is_some() && prompt.len() + opts.max_new_tokens > n_positions {
        return invalid!("--max-tokens {} is more than the decoder's {} positions take after its start token", opts.max_new_tokens, n_positions - prompt.len());
    }
    // A prompt longer than the context keeps its most recent tokens.
    let mut input = Tensor::from_slice(&prompt[prompt.len().saturating_sub(n_positions)..]).unsqueeze(0).to_device(device);
    let mut out: Vec<i64> = vec![];
    tch::no_grad(|| -> Result<()> {
        while out.len() < opts.max_new_tokens {
            crate::interrupt::check("generating")?;
            if cache.len() as usize + input.size()[1] as usize > n_positions {
                // The context is full: slide it, keeping the most recent tokens (the cache
                // holds positions that no longer exist, so it starts again).
                let all: Vec<i64> = prompt.iter().chain(&out).copied().collect();
                input = Tensor::from_slice(&all[all.len() - n_positions..]).unsqueeze(0).to_device(device);
                cache = KvCache::default();
            }
            let logits = model.forward(&input, None, &ForwardOptions::default(), Some(&mut cache))?.logits.expect("a language model has logits");
            let last = logits.f_select(1, -1)?.f_to_kind(Kind::Float)?; // (1, V)
            if !bool::try_from(last.f_isfinite()?.f_all()?)? {
                return invalid!(
                    "the model's logits hold NaN or infinite values, so there is nothing to sample from; its weights may have diverged (`%weights` shows them)"
                );
            }
            let last = match opts.constraints.is_active() {
                true => {
                    let sequence = [prompt.iter().chain(&out).copied().collect::<Vec<i64>>()];
                    opts.constraints.apply(&sequence, last, prompt.len() + opts.max_new_tokens, &opts.stop_ids)?
                }
                false => last,
            };
            let next = pick(&last, opts)?;
            out.push(next);
            on_token(next)?;
            if opts.stop_ids.contains(&next) {
                break;
            }
            input = Tensor::from_slice(&[next]).unsqueeze(0).to_device(device);
        }
        Ok(())
    })?;
    Ok(out)
}

/// The cache a generation starts with and the decoder's first ids: for a decoder, an
/// empty cache and the prompt; for an encoder–decoder, the prompt encoded as the source
/// and the decoder's start id.
pub(crate) fn start(model: &Model, prompt: &[i64]) -> Result<(KvCache, Vec<i64>)> {
    if model.task() != Task::Seq2Seq {
        return Ok((KvCache::default(), prompt.to_vec()));
    }
    let Some(first) = model.config().decoder_start_token_id() else {
        return invalid!("this encoder–decoder's config names no `decoder_start_token_id`, the id its decoder starts from");
    };
    let ids = Tensor::from_slice(prompt).unsqueeze(0).to_device(model.device());
    Ok((tch::no_grad(|| model.encode_source(&ids, None, &ForwardOptions::default()))?, vec![first]))
}

/// Checks that `model` generates (a decoder or an encoder–decoder) and `prompt` is a
/// non-empty run of its token ids.
pub(crate) fn check_prompt(model: &Model, prompt: &[i64]) -> Result<()> {
    if !matches!(model.task(), Task::LanguageModel | Task::Seq2Seq) {
        return invalid!("generation needs a decoder (a language model); this model is a {} encoder", model.config().model_type());
    }
    if prompt.is_empty() {
        return invalid!("generation needs a prompt of at least one token");
    }
    let vocab = model.config().vocab_size();
    if let Some(&bad) = prompt.iter().find(|&&id| !(0..vocab).contains(&id)) {
        return invalid!(
            "the prompt has token id {bad} but the model's vocabulary has ids 0..{}: the tokenizer and the model do not match; build the model with --vocab of at least the tokenizer's size",
            vocab - 1
        );
    }
    Ok(())
}

/// The most tokens one generation adds.
pub const MAX_NEW_TOKENS: usize = 1 << 20;

/// Below this temperature, sampling is greedy: dividing logits by a tinier number
/// overflows to infinity, and the distribution is one-hot to float precision anyway.
pub const GREEDY_BELOW: f64 = 1e-4;

/// Chooses the next id from `logits: (1, V)`, finite but where the processors put −∞.
/// Sampling works on log-probabilities (`log_softmax` subtracts the maximum first), so
/// large logits or small temperatures do not overflow.
fn pick(logits: &Tensor, opts: &GenerateOptions) -> Result<i64> {
    if opts.temperature < GREEDY_BELOW {
        return Ok(logits.f_argmax(-1, false)?.int64_value(&[0]));
    }
    let mut logits = logits.f_div_scalar(opts.temperature)?.f_log_softmax(-1, Kind::Float)?;
    let vocab = logits.size()[1];
    if let Some(k) = opts.top_k.filter(|&k| k < vocab) {
        let kth = logits.f_topk(k, -1, true, true)?.0.f_select(1, k - 1)?.f_unsqueeze(-1)?; // (1, 1)
        logits = logits.f_masked_fill(&logits.f_lt_tensor(&kth)?, f64::NEG_INFINITY)?;
    }
    if let Some(p) = opts.top_p.filter(|&p| p < 1.0) {
        let (sorted, order) = logits.f_sort(-1, true)?;
        let probs = sorted.f_softmax(-1, Kind::Float)?;
        let cumulative = probs.f_cumsum(-1, Kind::Float)?;
        // Drop a token when the ones before it already reach p; the first always stays.
        let drop_sorted = (cumulative - probs).f_gt(p)?;
        let drop = drop_sorted.f_scatter(-1, &order, &drop_sorted)?;
        logits = logits.f_masked_fill(&drop, f64::NEG_INFINITY)?;
    }
    Ok(logits.f_softmax(-1, Kind::Float)?.f_multinomial(1, false)?.int64_value(&[0, 0]))
}
