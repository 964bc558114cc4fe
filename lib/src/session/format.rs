//! How values are written in the command language and read back: device names,
//! durations, big numbers, `k=v` pairs.

use tch::Device;

/// Hyperparameters as a command line writes them: `k=v k=v`.
pub(crate) fn pairs(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// `cpu`, `cuda:0`.
pub(crate) fn device_name(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
        Device::Cpu => "cpu".into(),
    }
}

/// `cpu`, `cuda` (device 0), `cuda:N`, `mps`: the names [`device_name`] writes.
pub(crate) fn parse_device(name: &str) -> Option<Device> {
    match name {
        "cpu" => Some(Device::Cpu),
        "cuda" => Some(Device::Cuda(0)),
        "mps" => Some(Device::Mps),
        other => other.strip_prefix("cuda:")?.parse().ok().map(Device::Cuda),
    }
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
