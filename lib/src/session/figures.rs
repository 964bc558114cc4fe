//! Figures several commands draw or write: the loss plot of training histories, and a
//! figure saved to a file.

use crate::checkpoint::find::expand_home;
use crate::plot::{ema, line_chart, LineChart, Series};
use crate::train::History;

/// The loss figure of `runs`: raw (faint), smoothed, validation points.
pub(crate) fn loss_figure(runs: &[(&str, &History)], smooth: f64, log_y: bool) -> crate::Result<crate::plot::Figure> {
    let mut series = vec![];
    for (name, h) in runs {
        let raw: Vec<(f64, f64)> = h.steps.iter().map(|r| (r.step as f64, r.loss)).collect();
        if smooth > 0.0 {
            let ys: Vec<f64> = raw.iter().map(|p| p.1).collect();
            series.push(Series { name: name.to_string(), points: raw.clone(), markers: false, faint: true });
            series.push(Series {
                name: name.to_string(),
                points: raw.iter().zip(ema(&ys, smooth)).map(|((x, _), y)| (*x, y)).collect(),
                markers: false,
                faint: false,
            });
        } else {
            series.push(Series { name: name.to_string(), points: raw, markers: false, faint: false });
        }
        let val: Vec<(f64, f64)> = h.steps.iter().filter_map(|r| r.val.as_ref().map(|v| (r.step as f64, v.loss))).collect();
        if !val.is_empty() {
            series.push(Series { name: name.to_string(), points: val, markers: true, faint: false });
        }
    }
    line_chart(&LineChart { title: "training loss".into(), x_label: "step".into(), y_label: "loss".into(), log_x: false, log_y, series })
}

/// Writes a figure to `path`: SVG for `.svg`, PNG otherwise; missing directories are made.
pub(crate) fn save_figure(figure: &crate::plot::Figure, path: &str) -> crate::Result<()> {
    let path = expand_home(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    }
    let bytes = if path.extension().is_some_and(|e| e == "svg") { figure.svg.clone().into_bytes() } else { figure.png.clone() };
    crate::checkpoint::atomic_write(&path, |w| std::io::Write::write_all(w, &bytes))
}
