//! Devices by name, as the command language, saved runs and worker processes write
//! them (`cpu`, `cuda:0`), for every layer that passes a device along.

use tch::Device;

/// `cpu`, `cuda:0`.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
        Device::Cpu => "cpu".into(),
    }
}

/// `cpu`, `cuda` (device 0), `cuda:N`, `mps`: the names [`device_name`] writes.
pub fn parse_device(name: &str) -> Option<Device> {
    match name {
        "cpu" => Some(Device::Cpu),
        "cuda" => Some(Device::Cuda(0)),
        "mps" => Some(Device::Mps),
        other => other.strip_prefix("cuda:")?.parse().ok().map(Device::Cuda),
    }
}
