//! `tchlab-kernel`: the tchlab Jupyter kernel.
//!
//! `tchlab-kernel install [--user | --sys-prefix | --prefix PATH]` writes the kernelspec;
//! Jupyter then starts `tchlab-kernel run --connection-file FILE`. Only this crate
//! knows the Jupyter protocol; the session engine in `tchlab` does the work.

mod install;
mod server;
mod widgets;
mod wire;
mod worker;

use std::path::PathBuf;

const USAGE: &str = "usage:
  tchlab-kernel install [--user | --sys-prefix | --prefix PATH]   write the Jupyter kernelspec (default --user)
  tchlab-kernel run --connection-file FILE                        serve a Jupyter client (Jupyter runs this)";

fn main() {
    // Rust cells run in a copy of this program; in that copy, this call never returns.
    tchlab_cells::runtime_hook();
    // `%sweep --jobs N` runs its trials in copies of this program, which end here.
    tchlab::sweep::worker::hook();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["install"] | ["install", "--user"] => install(install::Target::User),
        ["install", "--sys-prefix"] => install(install::Target::SysPrefix),
        ["install", "--prefix", path] => install(install::Target::Prefix(PathBuf::from(path))),
        ["run", "--connection-file", file] | ["run", "-f", file] => server::run(std::path::Path::new(file)),
        ["--help"] | ["-h"] | ["help"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unrecognised arguments: {}\n{USAGE}", args.join(" "))),
    };
    if let Err(message) = result {
        eprintln!("tchlab-kernel: {message}");
        std::process::exit(2);
    }
}

fn install(target: install::Target) -> Result<(), String> {
    let dir = install::install(&target)?;
    println!("installed the tchlab kernelspec in {}", dir.display());
    Ok(())
}
