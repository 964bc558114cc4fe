//! What a sweep searches: each hyperparameter's space, as `%sweep` writes it
//! (`k=[a,b,c]`, `k=log(1e-4,1e-2)`, `k=uniform(0,0.3)`, `k=int(1,8)`).

use serde::Serialize;

use crate::data::Rng;
use crate::error::{invalid, Result};

/// Where a hyperparameter's values come from.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub enum Space {
    /// These values (`[a,b,c]`): a choice among them.
    List(Vec<String>),
    /// Log-uniform between two positive bounds (`log(lo,hi)`).
    LogUniform(f64, f64),
    /// Uniform between two bounds (`uniform(lo,hi)`).
    Uniform(f64, f64),
    /// A whole number between two bounds, both included (`int(lo,hi)`).
    Int(i64, i64),
}

/// One swept hyperparameter.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Param {
    /// Its name.
    pub key: String,
    /// Its values.
    pub space: Space,
}

/// The largest whole-number bound: searches work in `f64`, exact to here.
const MAX_INT: i64 = 1 << 53;

/// A trial's hyperparameters: `(key, value)` in the order the sweep names them.
pub type Values = Vec<(String, String)>;

impl Param {
    /// Reads `key` and `[a,b]`, `log(lo,hi)`, `uniform(lo,hi)` or `int(lo,hi)`.
    pub fn parse(key: &str, value: &str) -> Result<Self> {
        let v = value.trim();
        let inner = |open: &str| v.strip_prefix(open).and_then(|r| r.strip_suffix(')')).map(|r| r.split(',').map(str::trim).collect::<Vec<_>>());
        let bounds = |parts: Vec<&str>| -> Result<(f64, f64)> {
            match parts.as_slice() {
                [lo, hi] => match (lo.parse::<f64>(), hi.parse::<f64>()) {
                    (Ok(lo), Ok(hi)) if lo < hi && (hi - lo).is_finite() => Ok((lo, hi)),
                    _ => invalid!("{key}={v}: expected two numbers, the lower first"),
                },
                _ => invalid!("{key}={v}: expected two bounds"),
            }
        };
        let space = if let Some(list) = v.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let values: Vec<String> = list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            if values.is_empty() {
                return invalid!("{key}={v}: the list is empty");
            }
            Space::List(values)
        } else if let Some(parts) = inner("log(") {
            let (lo, hi) = bounds(parts)?;
            if lo <= 0.0 {
                return invalid!("{key}={v}: a log range needs positive bounds");
            }
            Space::LogUniform(lo, hi)
        } else if let Some(parts) = inner("uniform(") {
            let (lo, hi) = bounds(parts)?;
            Space::Uniform(lo, hi)
        } else if let Some(parts) = inner("int(") {
            match parts.as_slice() {
                [lo, hi] => match (lo.parse::<i64>(), hi.parse::<i64>()) {
                    (Ok(lo), Ok(hi)) if lo <= hi && lo.abs() <= MAX_INT && hi.abs() <= MAX_INT => Space::Int(lo, hi),
                    _ => return invalid!("{key}={v}: expected two whole numbers within ±{MAX_INT}, the lower first"),
                },
                _ => return invalid!("{key}={v}: expected two bounds"),
            }
        } else {
            Space::List(vec![v.to_string()])
        };
        // Every value must be one the trainer accepts.
        let mut check = crate::train::HParams::default();
        for sample in samples_of(&space) {
            crate::train::check_setting(&mut check, key, &sample)?;
        }
        Ok(Param { key: key.to_string(), space })
    }

    /// A value drawn uniformly from the space (log-uniformly for `log`).
    pub fn draw(&self, rng: &mut Rng) -> String {
        let u = unit(rng);
        match &self.space {
            Space::List(values) => values[rng.below(values.len() as u64) as usize].clone(),
            Space::Int(lo, hi) => (lo + rng.below((hi - lo + 1) as u64) as i64).to_string(),
            _ => {
                let (lo, hi) = self.bounds().expect("a range");
                self.write(lo + u * (hi - lo))
            }
        }
    }

    /// Population-based training's explore step, as Ray Tune's `PopulationBasedTraining`
    /// does it with its defaults: a fresh draw one time in four; else a number times 0.8
    /// or 1.2 (a whole number moved at least one, both kept in range), a listed value
    /// moved to a neighbour.
    pub fn perturb(&self, value: &str, rng: &mut Rng) -> String {
        if unit(rng) < 0.25 {
            return self.draw(rng);
        }
        let up = rng.below(2) == 1;
        match &self.space {
            Space::List(values) => match values.iter().position(|v| v == value) {
                Some(i) => values[if up { (i + 1).min(values.len() - 1) } else { i.saturating_sub(1) }].clone(),
                None => self.draw(rng),
            },
            Space::Int(lo, hi) => match value.parse::<i64>() {
                Ok(v) => {
                    let scaled = (v as f64 * if up { 1.2 } else { 0.8 }).round() as i64;
                    let moved = if scaled != v {
                        scaled
                    } else if up {
                        v.saturating_add(1)
                    } else {
                        v.saturating_sub(1)
                    };
                    moved.clamp(*lo, *hi).to_string()
                }
                Err(_) => self.draw(rng),
            },
            Space::LogUniform(lo, hi) | Space::Uniform(lo, hi) => match value.parse::<f64>() {
                Ok(v) => format_value((v * if up { 1.2 } else { 0.8 }).clamp(*lo, *hi)),
                Err(_) => self.draw(rng),
            },
        }
    }

    /// A numeric space's bounds in the coordinates a search works in: `ln` for log
    /// ranges, half a step past each end for whole numbers; `None` for a list.
    pub fn bounds(&self) -> Option<(f64, f64)> {
        match self.space {
            Space::List(_) => None,
            Space::LogUniform(lo, hi) => Some((lo.ln(), hi.ln())),
            Space::Uniform(lo, hi) => Some((lo, hi)),
            Space::Int(lo, hi) => Some((lo as f64 - 0.5, hi as f64 + 0.5)),
        }
    }

    /// A value's search coordinate (see [`Param::bounds`]); `None` for a list or an
    /// unreadable value.
    pub fn coordinate(&self, value: &str) -> Option<f64> {
        let x: f64 = value.parse().ok()?;
        match self.space {
            Space::List(_) => None,
            Space::LogUniform(..) => Some(x.ln()),
            _ => Some(x),
        }
    }

    /// The value at search coordinate `x`.
    pub fn write(&self, x: f64) -> String {
        let (lo, hi) = self.bounds().expect("a numeric space");
        let x = x.clamp(lo, hi);
        match self.space {
            Space::LogUniform(lo, hi) => format_value(x.exp().clamp(lo, hi)),
            Space::Int(lo, hi) => (x.round() as i64).clamp(lo, hi).to_string(),
            _ => format_value(x),
        }
    }
}

/// A number in `[0, 1)`.
pub(crate) fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Values to validate a space with: its list, or its bounds.
fn samples_of(space: &Space) -> Vec<String> {
    match space {
        Space::List(v) => v.clone(),
        Space::LogUniform(lo, hi) | Space::Uniform(lo, hi) => vec![format_value(*lo), format_value(*hi)],
        Space::Int(lo, hi) => vec![lo.to_string(), hi.to_string()],
    }
}

/// Three significant digits.
fn format_value(v: f64) -> String {
    format!("{v:.3e}").parse::<f64>().map_or_else(|_| v.to_string(), |x| x.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_parse_and_refuse_bad_values() {
        assert_eq!(Param::parse("lr", "[1e-3, 3e-4]").unwrap().space, Space::List(vec!["1e-3".into(), "3e-4".into()]));
        assert_eq!(Param::parse("lr", "log(1e-4,1e-2)").unwrap().space, Space::LogUniform(1e-4, 1e-2));
        assert_eq!(Param::parse("warmup", "int(0,20)").unwrap().space, Space::Int(0, 20));
        assert!(Param::parse("lr", "log(0,1)").unwrap_err().to_string().contains("positive"));
        assert!(Param::parse("batch", "[8,zero]").unwrap_err().to_string().contains("batch=zero"));
        assert!(Param::parse("lr", "log(1e-2,1e-4)").is_err());
        assert!(Param::parse("warmup", "int(5,1)").is_err());
        assert!(Param::parse("warmup", "int(0,9223372036854775807)").unwrap_err().to_string().contains("within"));
        assert!(Param::parse("lr", "uniform(-1e308,1e308)").is_err(), "a range wider than a float holds");
        assert!(Param::parse("batch", "int(0,8)").unwrap_err().to_string().contains("batch"), "batch=0 is refused by the trainer");
    }

    #[test]
    fn perturbations_move_a_little_and_stay_in_range() {
        let lr = Param::parse("lr", "log(1e-4,1e-2)").unwrap();
        let warmup = Param::parse("warmup", "int(0,3)").unwrap();
        let schedule = Param::parse("schedule", "[constant,linear,cosine]").unwrap();
        let mut rng = Rng::new(5);
        let (mut scaled, mut drawn, mut unmoved_warmup) = (0, 0, 0);
        for _ in 0..400 {
            let v: f64 = lr.perturb("0.001", &mut rng).parse().unwrap();
            assert!((1e-4..=1e-2).contains(&v));
            if v == 0.0012 || v == 0.0008 {
                scaled += 1;
            } else {
                drawn += 1;
            }
            let w: i64 = warmup.perturb("1", &mut rng).parse().unwrap();
            assert!((0..=3).contains(&w));
            unmoved_warmup += usize::from(w == 1);
            assert!(["constant", "linear", "cosine"].contains(&schedule.perturb("linear", &mut rng).as_str()));
        }
        assert!(scaled > 250 && drawn > 60, "three in four scaled by 0.8 or 1.2, one in four drawn afresh: {scaled} {drawn}");
        assert!(unmoved_warmup < 50, "1 × 0.8 or 1.2 rounds back to 1, so a whole number is moved one instead: {unmoved_warmup} of 400 stayed");
    }

    #[test]
    fn coordinates_round_trip_and_whole_numbers_stay_whole() {
        let lr = Param::parse("lr", "log(1e-4,1e-2)").unwrap();
        let x = lr.coordinate("0.001").unwrap();
        assert_eq!(lr.write(x), "0.001");
        let warmup = Param::parse("warmup", "int(0,20)").unwrap();
        assert_eq!(warmup.write(20.49), "20");
        assert_eq!(warmup.write(-3.0), "0");
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            let w: i64 = warmup.draw(&mut rng).parse().unwrap();
            assert!((0..=20).contains(&w));
        }
    }
}
