//! Search quality for `make bench` (python/bench.py runs Optuna's `TPESampler` beside
//! it): tchlab's TPE and random search on Branin (2-D) and Hartmann-6, 50 trials for
//! each of 20 seeds, the best value each seed found; and a real `%sweep` of `lr` and
//! `warmup` on the reverse task, TPE and ASHA against random search with about the same
//! budget of steps (500: 20 trials of 25 steps; ASHA 20 trials from rungs of 5 steps,
//! 460 in all).

use tchlab::session::Session;
use tchlab::sweep::sampler::{Random, Sampler};
use tchlab::sweep::tpe::Tpe;
use tchlab::sweep::{Observation, Param, Space, Values};

const TRIALS: usize = 50;
const SEEDS: u64 = 20;

fn branin(x: &[f64]) -> f64 {
    let (x1, x2) = (x[0], x[1]);
    let (a, b, c, r, s, t) = (1.0, 5.1 / (4.0 * std::f64::consts::PI.powi(2)), 5.0 / std::f64::consts::PI, 6.0, 10.0, 1.0 / (8.0 * std::f64::consts::PI));
    a * (x2 - b * x1 * x1 + c * x1 - r).powi(2) + s * (1.0 - t) * x1.cos() + s
}

fn hartmann6(x: &[f64]) -> f64 {
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    const A: [[f64; 6]; 4] =
        [[10.0, 3.0, 17.0, 3.5, 1.7, 8.0], [0.05, 10.0, 17.0, 0.1, 8.0, 14.0], [3.0, 3.5, 1.7, 10.0, 17.0, 8.0], [17.0, 8.0, 0.05, 10.0, 0.1, 14.0]];
    const P: [[f64; 6]; 4] = [
        [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
        [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
        [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
        [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
    ];
    -(0..4).map(|i| ALPHA[i] * (-(0..6).map(|j| A[i][j] * (x[j] - P[i][j]).powi(2)).sum::<f64>()).exp()).sum::<f64>()
}

/// The best value `sampler` finds on `f` in [`TRIALS`] trials.
fn best(mut sampler: Box<dyn Sampler>, params: &[Param], f: fn(&[f64]) -> f64) -> f64 {
    let mut finished: Vec<Observation> = vec![];
    for _ in 0..TRIALS {
        let values: Values = sampler.propose(params, &finished).expect("samplers of ranges never run out");
        let x: Vec<f64> = values.iter().map(|(_, v)| v.parse().expect("a number")).collect();
        finished.push((values, f(&x)));
    }
    finished.iter().map(|(_, y)| *y).fold(f64::INFINITY, f64::min)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
}

fn uniform(key: &str, lo: f64, hi: f64) -> Param {
    Param { key: key.into(), space: Space::Uniform(lo, hi) }
}

/// The median best validation loss of a real sweep (`how`: its options) over `seeds` seeds.
fn real_sweep(how: &str, seeds: u64) -> f64 {
    let scores = (0..seeds)
        .map(|seed| {
            let mut session = Session::new();
            let setup = format!(
                "%device cpu\n%seed {seed}\n%data synth reverse --length 5\n%model gpt --layers 1 --heads 2 --dim 32\n%set batch=32 eval_batches=4\n\
                 %sweep lr=log(1e-4,1e-1) warmup=int(0,20) {how}"
            );
            let mut result = None;
            session
                .run_cell(&setup, &mut |o| {
                    if let tchlab::session::output::Output::Result(b) = o {
                        result = b.data().cloned();
                    }
                })
                .expect("the sweep runs");
            let result = result.expect("a result");
            result["trials"].as_array().expect("trials").iter().filter_map(|t| t["score"].as_f64()).fold(f64::INFINITY, f64::min)
        })
        .collect();
    median(scores)
}

fn main() {
    tch::set_num_threads(1);
    let branin_space = [uniform("x1", -5.0, 10.0), uniform("x2", 0.0, 15.0)];
    let hartmann_space: Vec<Param> = (1..=6).map(|i| uniform(&format!("x{i}"), 0.0, 1.0)).collect();
    let mut out = serde_json::Map::new();
    for (name, space, f) in [("branin", &branin_space[..], branin as fn(&[f64]) -> f64), ("hartmann6", &hartmann_space[..], hartmann6)] {
        let tpe = median((0..SEEDS).map(|s| best(Box::new(Tpe::new(s)), space, f)).collect());
        let random = median((0..SEEDS).map(|s| best(Box::new(Random::new(s)), space, f)).collect());
        out.insert(name.into(), serde_json::json!({ "tpe": tpe, "random": random }));
    }
    out.insert(
        "sweep".into(),
        serde_json::json!({
            "tpe": real_sweep("--method tpe --trials 20 --steps 25", 5),
            "random": real_sweep("--method random --trials 20 --steps 25", 5),
            "asha": real_sweep("--method random --schedule asha --trials 20 --steps 5", 5),
        }),
    );
    println!("{}", serde_json::Value::Object(out));
}
