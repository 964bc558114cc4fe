//! Loss-plot rendering time for `make bench` (python/bench.py runs matplotlib doing the
//! same beside it): a 1600×800 PNG of 10,000 raw points, their moving average and 40
//! validation points on a log axis, rendered and encoded on one thread.

use std::time::Instant;

use tchlab::plot::{ema, line_chart, LineChart, Series};

fn main() {
    let raw: Vec<(f64, f64)> = (1..=10_000).map(|i| (f64::from(i), 3.0 / f64::from(i).sqrt() * (1.0 + 0.2 * (f64::from(i) * 0.7).sin()))).collect();
    let smooth: Vec<(f64, f64)> = raw.iter().zip(ema(&raw.iter().map(|p| p.1).collect::<Vec<_>>(), 0.9)).map(|(p, y)| (p.0, y)).collect();
    let val: Vec<(f64, f64)> = raw.iter().step_by(250).map(|&(x, y)| (x, y * 1.1)).collect();
    let chart = LineChart {
        title: "training loss".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        log_x: false,
        log_y: true,
        series: vec![
            Series { name: "main".into(), points: raw, markers: false, faint: true },
            Series { name: "main".into(), points: smooth, markers: false, faint: false },
            Series { name: "main".into(), points: val, markers: true, faint: false },
        ],
    };
    let figure = line_chart(&chart).expect("renders"); // warm-up: fonts, caches
    let runs = 30;
    let started = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(line_chart(&chart).expect("renders"));
    }
    let ms = 1000.0 * started.elapsed().as_secs_f64() / runs as f64;
    println!("{}", serde_json::json!({ "ms": ms, "png_bytes": figure.png.len() }));
}
