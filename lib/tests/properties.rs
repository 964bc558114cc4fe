//! Property tests of what user input reaches first: the cell splitter, the word and
//! argument parser, completion and help at any cursor, and the safetensors reader.
//! Each must answer every input with a value or an error, never a panic. The budget
//! is `PROPTEST_CASES` (256 by default; `make fuzz` runs a long one).

use proptest::prelude::*;
use tchlab::session::commands::{find, COMMANDS};
use tchlab::session::parse::{split_cell, words, Args, Cell};
use tchlab::session::Session;

/// Text that looks like cells: command names, options, quotes, escapes, `%%`, newlines.
fn cell_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        proptest::sample::select(COMMANDS.iter().map(|c| format!("%{} ", c.name)).collect::<Vec<_>>()),
        Just("%%".to_string()),
        Just("--".to_string()),
        Just("--max-tokens ".to_string()),
        Just("=".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("\\".to_string()),
        Just("\n".to_string()),
        Just("?".to_string()),
        Just(" ".to_string()),
        "[a-z0-9_.=é]{0,8}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|p| p.concat())
}

/// Found by `completion_help_and_completeness_answer_at_every_cursor`: a cursor inside
/// a multi-byte character sliced the text mid-character.
#[test]
fn a_cursor_inside_a_character_completes_from_before_it() {
    let session = Session::new();
    let cell = "%echo é";
    let completions = session.complete(cell, cell.len() - 1);
    assert_eq!(completions.end, cell.len() - 2);
    assert!(session.inspect(cell, cell.len() - 1).is_some());
}

/// Found by the same property in `make fuzz`: a space of more than one byte (U+00A0)
/// before the cursor ended the word one byte into it.
#[test]
fn a_wide_space_before_the_cursor_ends_the_word_after_it() {
    let session = Session::new();
    let cell = "%echo\u{a0}%tr";
    let completions = session.complete(cell, cell.len());
    assert_eq!(completions.start, "%echo\u{a0}".len());
}

proptest! {
    #[test]
    fn cells_split_and_arguments_parse_without_panicking(cell in cell_text()) {
        if let Ok(Cell::Commands(invocations)) = split_cell(&cell) {
            for inv in invocations {
                if let Some(command) = find(&inv.name) {
                    let _ = Args::parse(command, &inv.words, inv.body.clone());
                }
            }
        }
        let _ = words(&cell);
    }

    #[test]
    fn completion_help_and_completeness_answer_at_every_cursor(cell in cell_text(), cursor in 0usize..200) {
        let session = Session::new();
        let completions = session.complete(&cell, cursor);
        prop_assert!(completions.start <= completions.end && completions.end <= cell.len());
        let _ = session.inspect(&cell, cursor);
        let _ = session.is_complete(&cell);
    }

    #[test]
    fn random_and_mutated_safetensors_files_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..6),
    ) {
        let dir = std::env::temp_dir().join(format!("tchlab-prop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let random = dir.join("random.safetensors");
        std::fs::write(&random, &bytes).unwrap();
        let _ = tchlab::checkpoint::safetensors::read(&random);
        // A valid file with a few bytes changed: headers, offsets and dtypes go wrong.
        let valid = dir.join("valid.safetensors");
        let t = tch::Tensor::arange(12, (tch::Kind::Float, tch::Device::Cpu)).view([3, 4]);
        tchlab::checkpoint::safetensors::write(&valid, &[("w".into(), t)], &Default::default()).unwrap();
        let mut file = std::fs::read(&valid).unwrap();
        for (at, value) in flips {
            let at = at % file.len();
            file[at] = value;
        }
        std::fs::write(&random, &file).unwrap();
        let _ = tchlab::checkpoint::safetensors::read(&random);
    }
}
