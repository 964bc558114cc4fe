//! The tree-structured Parzen estimator (Bergstra et al., 2011), as Optuna's
//! `TPESampler` does it with its defaults for one objective (multivariate, since
//! Optuna 5): ten random trials first; then the finished trials split into the best
//! `γ(n) = min(⌈n/10⌉, 25)` and the rest, each side modelled by a mixture of product
//! kernels (one per trial, plus a broad prior) — truncated Gaussians for numbers, in
//! `ln` for log ranges, a continuous range rounded for whole numbers; smoothed counts
//! for listed choices — 24 candidates drawn from the good side's mixture `l`, and the
//! one that maximises `l(x) / g(x)` taken.

use super::sampler::{Observation, Random, Sampler};
use super::space::{unit, Param, Space, Values};
use crate::data::Rng;

/// Random trials before the model is used (Optuna's `n_startup_trials`).
const STARTUP_TRIALS: usize = 10;
/// Candidates drawn from `l` per parameter (Optuna's `n_ei_candidates`).
const CANDIDATES: usize = 24;
/// The prior's weight in each mixture (Optuna's `prior_weight`).
const PRIOR_WEIGHT: f64 = 1.0;

/// A TPE sampler.
pub struct Tpe {
    rng: Rng,
    startup: Random,
}

impl Tpe {
    /// A sampler seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Tpe { rng: Rng::new(seed ^ 0x54_50_45), startup: Random::new(seed) }
    }
}

impl Sampler for Tpe {
    fn propose(&mut self, params: &[Param], finished: &[Observation]) -> Option<Values> {
        if finished.len() < STARTUP_TRIALS {
            return Some(self.startup.draw(params));
        }
        // Lower is better; diverged trials (infinite scores) sort last. Ties keep trial order.
        let mut order: Vec<usize> = (0..finished.len()).collect();
        order.sort_by(|&a, &b| finished[a].1.total_cmp(&finished[b].1));
        let n_below = gamma(finished.len());
        let (mut below, mut above) = (order[..n_below].to_vec(), order[n_below..].to_vec());
        // Each side in trial order, so that the weights favour recent trials.
        below.sort_unstable();
        above.sort_unstable();
        let side = |indices: &[usize]| -> Vec<Vec<Coordinate>> { indices.iter().map(|&i| coordinates(params, &finished[i].0)).collect() };
        let (l, g) = (Parzen::fit(params, &side(&below)), Parzen::fit(params, &side(&above)));
        let best = (0..CANDIDATES)
            .map(|_| l.sample(&mut self.rng))
            .map(|x| (l.log_pdf(&x) - g.log_pdf(&x), x))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, x)| x)
            .expect("candidates");
        Some(params.iter().zip(best).map(|(p, x)| (p.key.clone(), write(p, x))).collect())
    }
}

/// One parameter's value where the estimator works: a coordinate of a numeric space
/// (see [`Param::bounds`]), or the index of a listed choice.
#[derive(Debug, Clone, Copy)]
enum Coordinate {
    Number(f64),
    Choice(usize),
}

/// A trial's values as coordinates, in `params`' order (a value that cannot be read,
/// from a sweep over other values, becomes the middle of its range or the first choice).
fn coordinates(params: &[Param], values: &Values) -> Vec<Coordinate> {
    params
        .iter()
        .map(|p| {
            let value = values.iter().find(|(k, _)| *k == p.key).map(|(_, v)| v.as_str()).unwrap_or("");
            match &p.space {
                Space::List(choices) => Coordinate::Choice(choices.iter().position(|c| c == value).unwrap_or(0)),
                _ => {
                    let (lo, hi) = p.bounds().expect("a numeric space");
                    Coordinate::Number(p.coordinate(value).unwrap_or(0.5 * (lo + hi)))
                }
            }
        })
        .collect()
}

fn write(param: &Param, x: Coordinate) -> String {
    match (x, &param.space) {
        (Coordinate::Choice(i), Space::List(choices)) => choices[i].clone(),
        (Coordinate::Number(x), _) => param.write(x),
        (Coordinate::Choice(_), _) => unreachable!("choices come from listed spaces"),
    }
}

/// How many of `n` finished trials count as good: Optuna's default `γ`.
fn gamma(n: usize) -> usize {
    n.div_ceil(10).min(25)
}

/// Optuna's default weights of `n` observations in trial order: equal for up to 25,
/// then a ramp from `1/n` for the older ones.
fn weights(n: usize) -> Vec<f64> {
    if n < 25 {
        return vec![1.0; n];
    }
    let ramp = n - 25;
    let mut w: Vec<f64> =
        (0..ramp).map(|i| if ramp == 1 { 1.0 / n as f64 } else { 1.0 / n as f64 + (1.0 - 1.0 / n as f64) * i as f64 / (ramp - 1) as f64 }).collect();
    w.extend(std::iter::repeat_n(1.0, 25));
    w
}

/// The index `u` (in `[0, 1)`) falls on in the cumulative `weights`.
fn pick(weights: &[f64], u: f64) -> usize {
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if u < acc {
            return i;
        }
    }
    weights.len() - 1
}

/// One dimension of a kernel: a Gaussian truncated to the range, or a distribution
/// over the choices.
#[derive(Debug, Clone)]
enum Kernel {
    Gaussian { mu: f64, sigma: f64, lo: f64, hi: f64 },
    Choices(Vec<f64>),
}

impl Kernel {
    fn sample(&self, rng: &mut Rng) -> Coordinate {
        match self {
            Kernel::Gaussian { mu, sigma, lo, hi } => {
                for _ in 0..100 {
                    let x = mu + sigma * normal(rng);
                    if (*lo..=*hi).contains(&x) {
                        return Coordinate::Number(x);
                    }
                }
                Coordinate::Number(lo + unit(rng) * (hi - lo))
            }
            Kernel::Choices(p) => Coordinate::Choice(pick(p, unit(rng))),
        }
    }

    fn log_pdf(&self, x: Coordinate) -> f64 {
        match (self, x) {
            (Kernel::Gaussian { mu, sigma, lo, hi }, Coordinate::Number(x)) => {
                let z = (x - mu) / sigma;
                let mass = (phi((hi - mu) / sigma) - phi((lo - mu) / sigma)).max(1e-300);
                -0.5 * z * z - sigma.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln() - mass.ln()
            }
            (Kernel::Choices(p), Coordinate::Choice(i)) => p[i].max(1e-300).ln(),
            _ => f64::NEG_INFINITY,
        }
    }
}

/// The multivariate Parzen estimator Optuna uses by default for one objective: one
/// product kernel per observed trial (each dimension's width from that dimension's
/// neighbours), plus a broad prior kernel, weighted.
struct Parzen {
    weights: Vec<f64>,
    /// `[component][dimension]`.
    kernels: Vec<Vec<Kernel>>,
}

impl Parzen {
    fn fit(params: &[Param], observed: &[Vec<Coordinate>]) -> Parzen {
        let n = observed.len();
        let mut kernels: Vec<Vec<Kernel>> = vec![Vec::with_capacity(params.len()); n + 1];
        for (d, p) in params.iter().enumerate() {
            match &p.space {
                Space::List(choices) => {
                    let c = choices.len();
                    for (k, row) in observed.iter().enumerate() {
                        let mut probs = vec![PRIOR_WEIGHT / c as f64; c];
                        if let Coordinate::Choice(i) = row[d] {
                            probs[i] += 1.0;
                        }
                        let total: f64 = probs.iter().sum();
                        kernels[k].push(Kernel::Choices(probs.iter().map(|x| x / total).collect()));
                    }
                    kernels[n].push(Kernel::Choices(vec![1.0 / c as f64; c]));
                }
                _ => {
                    let (lo, hi) = p.bounds().expect("a numeric space");
                    let mus: Vec<f64> = observed.iter().map(|row| if let Coordinate::Number(x) = row[d] { x } else { 0.5 * (lo + hi) }).collect();
                    for (k, sigma) in widths(&mus, lo, hi).into_iter().enumerate() {
                        kernels[k].push(Kernel::Gaussian { mu: mus[k], sigma, lo, hi });
                    }
                    kernels[n].push(Kernel::Gaussian { mu: 0.5 * (lo + hi), sigma: hi - lo, lo, hi });
                }
            }
        }
        let mut w = weights(n);
        w.push(PRIOR_WEIGHT);
        let total: f64 = w.iter().sum();
        Parzen { weights: w.iter().map(|x| x / total).collect(), kernels }
    }

    fn sample(&self, rng: &mut Rng) -> Vec<Coordinate> {
        let k = pick(&self.weights, unit(rng));
        self.kernels[k].iter().map(|kernel| kernel.sample(rng)).collect()
    }

    fn log_pdf(&self, x: &[Coordinate]) -> f64 {
        let terms: Vec<f64> =
            self.kernels.iter().zip(&self.weights).map(|(kernel, w)| w.ln() + kernel.iter().zip(x).map(|(k, &xd)| k.log_pdf(xd)).sum::<f64>()).collect();
        let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if top == f64::NEG_INFINITY {
            return top;
        }
        top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln()
    }
}

/// Each observation's kernel width in one dimension (Optuna's rule): the larger gap to
/// its neighbours, the range's ends counting as neighbours except for the outermost
/// observations, clipped to `[(hi − lo) / min(100, n + 2), hi − lo]`.
fn widths(mus: &[f64], lo: f64, hi: f64) -> Vec<f64> {
    let n = mus.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| mus[a].total_cmp(&mus[b]));
    let mut with_ends = vec![lo];
    with_ends.extend(order.iter().map(|&i| mus[i]));
    with_ends.push(hi);
    let mut sorted: Vec<f64> = (1..=n).map(|k| (with_ends[k] - with_ends[k - 1]).max(with_ends[k + 1] - with_ends[k])).collect();
    if n >= 2 {
        sorted[0] = with_ends[2] - with_ends[1];
        sorted[n - 1] = with_ends[n] - with_ends[n - 1];
    }
    let (min_sigma, max_sigma) = ((hi - lo) / (100.0f64).min(n as f64 + 2.0), hi - lo);
    let mut sigmas = vec![0.0; n];
    for (k, &i) in order.iter().enumerate() {
        sigmas[i] = sorted[k].clamp(min_sigma, max_sigma);
    }
    sigmas
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut Rng) -> f64 {
    let u1 = unit(rng).max(f64::MIN_POSITIVE);
    let u2 = unit(rng);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The standard normal CDF.
fn phi(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, relative error
/// below 1.2e-7 everywhere).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06 + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The best value each sampler finds in `trials` trials on `f`, over `seeds` seeds.
    fn best_values(make: &dyn Fn(u64) -> Box<dyn Sampler>, params: &[Param], f: &dyn Fn(&Values) -> f64, trials: usize, seeds: u64) -> Vec<f64> {
        (0..seeds)
            .map(|seed| {
                let mut sampler = make(seed);
                let mut finished: Vec<Observation> = vec![];
                for _ in 0..trials {
                    let values = sampler.propose(params, &finished).unwrap();
                    let score = f(&values);
                    finished.push((values, score));
                }
                finished.iter().map(|(_, s)| *s).fold(f64::INFINITY, f64::min)
            })
            .collect()
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    #[test]
    fn tpe_beats_random_search_on_a_narrow_valley() {
        // (log10 lr + 3)² + (warmup − 7)²/50 + a listed choice that costs 1 unless "b".
        let params = [
            Param::parse("lr", "log(1e-6,1)").unwrap(),
            Param::parse("warmup", "int(0,40)").unwrap(),
            Param::parse("schedule", "[linear,cosine,constant]").unwrap(),
        ];
        let f = |v: &Values| {
            let lr: f64 = v[0].1.parse().unwrap();
            let warmup: f64 = v[1].1.parse().unwrap();
            (lr.log10() + 3.0).powi(2) + (warmup - 7.0).powi(2) / 50.0 + if v[2].1 == "cosine" { 0.0 } else { 1.0 }
        };
        let tpe = median(best_values(&|s| Box::new(Tpe::new(s)), &params, &f, 60, 15));
        let random = median(best_values(&|s| Box::new(Random::new(s)), &params, &f, 60, 15));
        assert!(tpe < random / 2.0, "median best: TPE {tpe}, random {random}");
    }

    #[test]
    fn the_model_waits_for_ten_trials_and_then_stays_in_range() {
        let params = [Param::parse("lr", "log(1e-4,1e-2)").unwrap()];
        let mut tpe = Tpe::new(0);
        let mut random = Random::new(0);
        let startup: Vec<Values> = (0..STARTUP_TRIALS).map(|_| random.propose(&params, &[]).unwrap()).collect();
        let mut finished = vec![];
        for expected in &startup {
            let v = tpe.propose(&params, &finished).unwrap();
            assert_eq!(&v, expected, "random until ten trials are in");
            finished.push((v, 1.0));
        }
        for i in 0..30 {
            let v = tpe.propose(&params, &finished).unwrap();
            let lr: f64 = v[0].1.parse().unwrap();
            assert!((1e-4..=1e-2).contains(&lr), "{lr}");
            finished.push((v, if i % 3 == 0 { f64::INFINITY } else { lr }));
        }
    }

    #[test]
    fn the_normal_cdf_is_accurate() {
        assert!((phi(0.0) - 0.5).abs() < 1e-7);
        assert!((phi(1.96) - 0.975_002_104_851_780_2).abs() < 1e-6);
        assert!((phi(-3.0) - 0.001_349_898_031_630_094_6).abs() < 1e-7);
        assert_eq!(gamma(10), 1);
        assert_eq!(gamma(300), 25);
        assert_eq!(weights(30).len(), 30);
    }
}
