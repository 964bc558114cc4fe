//! `tchlab`: the session engine in a terminal.
//!
//! `tchlab` starts an interactive session (line editing, completion, hints, history
//! kept across sessions, Ctrl-C to interrupt training); `tchlab run FILE` runs a
//! script of commands; `tchlab -c "CMD"` runs one cell. Only this crate knows about
//! terminals; the session engine in `tchlab` does the work.

mod explorer;
mod interactive;
mod render;

use std::path::Path;

use tchlab::session::Session;
use tchlab_cells::Lab;

use render::{Images, Renderer};

const USAGE: &str = "usage:
  tchlab                                   an interactive session (Ctrl-D to leave)
  tchlab run FILE [--keep-going] [--json]  run a script of commands; stop at the first error
  tchlab -c CELL [--json]                  run one cell (commands separated by newlines)
  tchlab prepare-rust-cells                compile what Rust cells need, once (`make rust-cells`)

  --keep-going  run every command even after errors (the exit status still says one failed)
  --json        print each command's JSON result, one per line, and nothing else on stdout (notes stay on stderr)
  TCHLAB_IMAGES=kitty|iterm|sixel|blocks|palette|braille|none chooses how plots are shown (NO_COLOR: no colour)";

fn main() {
    // Rust cells run in a copy of this program; in that copy, this call never returns.
    tchlab_cells::runtime_hook();
    // `%sweep --jobs N` runs its trials in copies of this program, which end here.
    tchlab::sweep::worker::hook();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let keep_going = args.iter().any(|a| a == "--keep-going");
    let words: Vec<&str> = args.iter().map(String::as_str).filter(|a| !matches!(*a, "--json" | "--keep-going")).collect();
    let code = match words.as_slice() {
        [] if !json && !keep_going => interactive::run(),
        ["run", file] => run_file(Path::new(file), keep_going, json),
        ["-c", cell] => run_cells(&[(0, cell.to_string())], "", keep_going, json),
        ["prepare-rust-cells"] => match tchlab_cells::prepare_rust_cells(&mut |note| eprintln!("{note}")) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("tchlab: preparing Rust cells failed: {e}");
                1
            }
        },
        ["--help"] | ["-h"] | ["help"] => {
            println!("{USAGE}");
            0
        }
        _ => {
            eprintln!("tchlab: unrecognised arguments: {}\n{USAGE}", args.join(" "));
            2
        }
    };
    std::process::exit(code);
}

/// The cells of a script with their line numbers: each command line is a cell; a
/// `%%` line takes the lines after it, up to a blank line, as its body; Rust runs up
/// to a blank line or a command line as one cell.
fn script_cells(text: &str) -> Vec<(usize, String)> {
    let mut cells = vec![];
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut cell = line.to_string();
        let rust = !trimmed.starts_with('%');
        if trimmed.starts_with("%%") || rust {
            while let Some((_, body)) = lines.next_if(|(_, l)| !l.trim().is_empty() && !(rust && l.trim_start().starts_with('%'))) {
                cell.push('\n');
                cell.push_str(body);
            }
        }
        cells.push((i + 1, cell));
    }
    cells
}

fn run_file(path: &Path, keep_going: bool, json: bool) -> i32 {
    match std::fs::read_to_string(path) {
        Ok(text) => run_cells(&script_cells(&text), &format!("{}:", path.display()), keep_going, json),
        Err(e) => {
            eprintln!("tchlab: {}: {e}", path.display());
            2
        }
    }
}

/// Runs cells in order; returns the exit status: 0, or 1 when a cell failed.
fn run_cells(cells: &[(usize, String)], origin: &str, keep_going: bool, json: bool) -> i32 {
    let mut lab = Lab::new(Session::new());
    interactive::interrupt_on_ctrl_c(&lab);
    let mut renderer = Renderer::new(Images::detect(), json);
    let mut status = 0;
    for (line, cell) in cells {
        let result = lab.run_cell(cell, &mut |o| renderer.show(o));
        if let Some(panel) = renderer.take_panel().filter(|_| !json) {
            eprintln!("({}: its controls run in the interactive terminal, `tchlab`, or a notebook with widgets)", panel.id);
        }
        match result {
            Ok(()) => renderer.finish(),
            Err(e) => {
                let location = if origin.is_empty() { String::new() } else { format!("{origin}{line}: ") };
                renderer.error(&e, &location);
                status = 1;
                if !keep_going {
                    break;
                }
            }
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_split_into_numbered_cells() {
        let text = "# a comment\n%seed 1\n\n%%time\n%step 2\n%step 3\n\n%echo done\nlet x = 1;\nx + 1\n%echo after\n";
        let cells = script_cells(text);
        assert_eq!(
            cells,
            vec![
                (2, "%seed 1".to_string()),
                (4, "%%time\n%step 2\n%step 3".to_string()),
                (8, "%echo done".to_string()),
                (9, "let x = 1;\nx + 1".to_string()),
                (11, "%echo after".to_string())
            ]
        );
    }
}
