//! How values are written in the command language and read back: durations, big
//! numbers, `k=v` pairs (device names are [`crate::device`]'s).

/// Hyperparameters as a command line writes them: `k=v k=v`.
pub(crate) fn pairs(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// `12.3 ms`, `1.52 s`, `850 µs`.
pub(crate) fn format_seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}
