//! Samplers: what the next trial tries, from the space and the trials finished so far.
//! Grid and random search, and the tree-structured Parzen estimator ([`super::tpe`]).

use super::space::{Param, Space, Values};
use super::tpe::Tpe;
use crate::data::Rng;
use crate::error::{invalid, Result};

/// The most trials one sweep runs.
pub const MAX_TRIALS: usize = 1000;

/// A finished trial as samplers see it: its values and score (lower is better;
/// infinite when it diverged).
pub type Observation = (Values, f64);

/// Chooses trials. A sampler is asked for one trial at a time and sees every trial
/// finished before it, so model-based samplers learn as the sweep goes.
pub trait Sampler {
    /// The next trial's values; `None` when the sampler has nothing more to try (a
    /// grid's end).
    fn propose(&mut self, params: &[Param], finished: &[Observation]) -> Option<Values>;
}

/// Every combination of listed values, in order.
pub struct Grid {
    combinations: std::vec::IntoIter<Values>,
}

impl Grid {
    /// The grid of `params`, each of which must list its values; refused beyond
    /// [`MAX_TRIALS`] combinations (counted before any is made).
    pub fn new(params: &[Param]) -> Result<Self> {
        let lists = params
            .iter()
            .map(|p| match &p.space {
                Space::List(values) => Ok((p.key.as_str(), values)),
                _ => invalid!("{}: a grid needs listed values ({}=[a,b]); ranges go with --method random or tpe", p.key, p.key),
            })
            .collect::<Result<Vec<_>>>()?;
        let size = lists.iter().fold(1usize, |n, (_, values)| n.saturating_mul(values.len()));
        if size > MAX_TRIALS {
            return invalid!("the grid has {size} combinations, more than the {MAX_TRIALS} a sweep runs; use --method random or tpe with --trials N");
        }
        let mut combinations: Vec<Values> = vec![vec![]];
        for (key, values) in lists {
            combinations =
                combinations.into_iter().flat_map(|c| values.iter().map(move |v| [c.clone(), vec![(key.to_string(), v.clone())]].concat())).collect();
        }
        Ok(Grid { combinations: combinations.into_iter() })
    }

    /// How many trials the grid has left.
    pub fn len(&self) -> usize {
        self.combinations.len()
    }

    /// Whether the grid is done.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Sampler for Grid {
    fn propose(&mut self, _: &[Param], _: &[Observation]) -> Option<Values> {
        self.combinations.next()
    }
}

/// Independent uniform draws (log-uniform for `log` ranges).
pub struct Random {
    rng: Rng,
}

impl Random {
    /// Draws seeded by `seed`.
    pub fn new(seed: u64) -> Self {
        Random { rng: Rng::new(seed ^ 0x53_57_45_45_50) }
    }

    /// One draw of every parameter.
    pub fn draw(&mut self, params: &[Param]) -> Values {
        params.iter().map(|p| (p.key.clone(), p.draw(&mut self.rng))).collect()
    }
}

impl Sampler for Random {
    fn propose(&mut self, params: &[Param], _: &[Observation]) -> Option<Values> {
        Some(self.draw(params))
    }
}

/// How trials are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every combination of listed values.
    Grid,
    /// Independent random draws.
    Random,
    /// The tree-structured Parzen estimator: random at first, then where good trials were.
    Tpe,
}

impl Method {
    /// Reads `grid`, `random` or `tpe`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "grid" => Ok(Method::Grid),
            "random" => Ok(Method::Random),
            "tpe" => Ok(Method::Tpe),
            other => invalid!("--method {other}: choose grid, random or tpe"),
        }
    }

    /// Its name, as `--method` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Grid => "grid",
            Method::Random => "random",
            Method::Tpe => "tpe",
        }
    }

    /// The sampler, and how many trials it runs.
    pub fn sampler(self, params: &[Param], trials: usize, seed: u64) -> Result<(Box<dyn Sampler>, usize)> {
        if self == Method::Grid {
            let grid = Grid::new(params)?;
            let n = grid.len();
            return Ok((Box::new(grid), n));
        }
        if !(1..=MAX_TRIALS).contains(&trials) {
            return invalid!("--trials must be between 1 and {MAX_TRIALS}, got {trials}");
        }
        let sampler: Box<dyn Sampler> = match self {
            Method::Random => Box::new(Random::new(seed)),
            _ => Box::new(Tpe::new(seed)),
        };
        Ok((sampler, trials))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_combine_and_random_draws_stay_in_range() {
        let params = [Param::parse("lr", "[1,2]").unwrap(), Param::parse("batch", "[8,16,32]").unwrap()];
        assert_eq!(Grid::new(&params).unwrap().len(), 6);
        let ranged = [Param::parse("lr", "log(1e-4,1e-2)").unwrap()];
        assert!(Grid::new(&ranged).err().unwrap().to_string().contains("--method random"));
        let mut random = Random::new(1);
        for _ in 0..50 {
            let lr: f64 = random.propose(&ranged, &[]).unwrap()[0].1.parse().unwrap();
            assert!((1e-4..=1e-2).contains(&lr), "{lr}");
        }
    }
}
