//! `tchlab-kernel install`: writes the kernelspec where Jupyter looks for it.

use std::path::PathBuf;

use serde_json::json;

/// Where to install.
pub enum Target {
    /// `~/.local/share/jupyter` (or `$JUPYTER_DATA_DIR`).
    User,
    /// The active Python environment's `share/jupyter` (`$VIRTUAL_ENV` or `$CONDA_PREFIX`).
    SysPrefix,
    /// `PREFIX/share/jupyter`.
    Prefix(PathBuf),
}

fn kernels_dir(target: &Target) -> Result<PathBuf, String> {
    Ok(match target {
        Target::User => match std::env::var_os("JUPYTER_DATA_DIR") {
            Some(dir) => PathBuf::from(dir).join("kernels"),
            None => PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set; use --prefix PATH")?).join(".local/share/jupyter/kernels"),
        },
        Target::SysPrefix => {
            let prefix = std::env::var_os("VIRTUAL_ENV")
                .or_else(|| std::env::var_os("CONDA_PREFIX"))
                .ok_or("--sys-prefix needs an active Python environment (VIRTUAL_ENV or CONDA_PREFIX); or use --prefix PATH")?;
            PathBuf::from(prefix).join("share/jupyter/kernels")
        }
        Target::Prefix(p) => p.join("share/jupyter/kernels"),
    })
}

/// Writes `kernels/tchlab/kernel.json` and the logos; returns the directory.
pub fn install(target: &Target) -> Result<PathBuf, String> {
    let dir = kernels_dir(target)?.join("tchlab");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    // Written with json!: optional fields must be absent or objects, never null.
    let spec = json!({
        "argv": [exe, "run", "--connection-file", "{connection_file}"],
        "display_name": "tchlab (Rust, libtorch)",
        "language": "rust",
        "interrupt_mode": "message",
        "env": {},
        "metadata": { "debugger": false },
    });
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        tchlab::atomic::write(&path, |w| std::io::Write::write_all(w, bytes)).map_err(|e| e.to_string())
    };
    write("kernel.json", serde_json::to_string_pretty(&spec).expect("JSON").as_bytes())?;
    for size in [32u32, 64] {
        write(&format!("logo-{size}x{size}.png"), &logo(size))?;
    }
    Ok(dir)
}

/// A small logo: a flame-orange square with a lighter diagonal band.
fn logo(size: u32) -> Vec<u8> {
    let mut pixels = Vec::with_capacity((size * size * 4) as usize);
    for y in 0..size {
        for x in 0..size {
            let band = (x + y).abs_diff(size) < size / 5;
            let (r, g, b) = if band { (255, 190, 120) } else { (238, 76, 44) };
            pixels.extend_from_slice(&[r, g, b, 255]);
        }
    }
    let mut out = vec![];
    let mut encoder = png::Encoder::new(&mut out, size, size);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("PNG header");
    writer.write_image_data(&pixels).expect("PNG data");
    writer.finish().expect("PNG end");
    out
}
