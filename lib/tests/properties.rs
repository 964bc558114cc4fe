//! Property tests of what user input reaches first: the cell splitter, the word and
//! argument parser, completion and help at any cursor, and the safetensors and GGUF
//! readers.
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

/// A small valid GGUF file: string, integer and string-array metadata, and tensors of
/// three types (F32, Q8_0, Q4_K).
fn small_gguf() -> Vec<u8> {
    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    string(&mut b, "llama");
    string(&mut b, "llama.block_count");
    b.extend(4u32.to_le_bytes());
    b.extend(2u32.to_le_bytes());
    string(&mut b, "tokenizer.ggml.tokens");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    for t in ["a", "b", "<|im_end|>"] {
        string(&mut b, t);
    }
    let tensors: [(&str, u64, u32, usize); 3] = [("f", 8, 0, 32), ("q8", 32, 8, 34), ("q4k", 256, 12, 144)];
    let mut offset = 0u64;
    for (name, values, kind, _) in tensors {
        string(&mut b, name);
        b.extend(1u32.to_le_bytes());
        b.extend(values.to_le_bytes());
        b.extend(kind.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += 160; // each tensor's bytes, padded to the alignment of 32
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for (i, (_, _, _, bytes)) in tensors.iter().enumerate() {
        b.extend((0..*bytes).map(|j| (i * 31 + j * 7) as u8 & 0x3b));
        b.extend(std::iter::repeat_n(0u8, 160 - bytes));
    }
    b
}

/// The file the GGUF property mutates reads as it is: the mutations start from valid.
#[test]
fn the_small_gguf_file_is_valid() {
    let path = std::env::temp_dir().join(format!("tchlab-small-{}.gguf", std::process::id()));
    std::fs::write(&path, small_gguf()).unwrap();
    let meta = tchlab::formats::gguf::read_metadata(&path).unwrap();
    assert_eq!(meta.tensors.len(), 3);
    let handle = std::fs::File::open(&path).unwrap();
    for info in &meta.tensors {
        let _tensor = tchlab::formats::gguf::read_tensor(&handle, &meta, info).unwrap();
    }
    assert_eq!(meta.strings("tokenizer.ggml.tokens").unwrap(), ["a", "b", "<|im_end|>"]);
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
        let _ = tchlab::formats::safetensors::read(&random);
        // A valid file with a few bytes changed: headers, offsets and dtypes go wrong.
        let valid = dir.join("valid.safetensors");
        let t = tch::Tensor::arange(12, (tch::Kind::Float, tch::Device::Cpu)).view([3, 4]);
        tchlab::formats::safetensors::write(&valid, &[("w".into(), t)], &Default::default()).unwrap();
        let mut file = std::fs::read(&valid).unwrap();
        for (at, value) in flips {
            let at = at % file.len();
            file[at] = value;
        }
        std::fs::write(&random, &file).unwrap();
        let _ = tchlab::formats::safetensors::read(&random);
    }

    #[test]
    fn mutated_and_truncated_gguf_files_never_panic(
        flips in proptest::collection::vec((0usize..1024, any::<u8>()), 0..6),
        cut in proptest::option::of(0usize..1024),
    ) {
        let dir = std::env::temp_dir().join(format!("tchlab-prop-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.gguf");
        let mut file = small_gguf();
        for (at, value) in flips {
            let at = at % file.len();
            file[at] = value;
        }
        if let Some(cut) = cut {
            file.truncate(cut % (file.len() + 1));
        }
        std::fs::write(&path, &file).unwrap();
        if let Ok(meta) = tchlab::formats::gguf::read_metadata(&path) {
            let handle = std::fs::File::open(&path).unwrap();
            for info in &meta.tensors {
                // A flipped dimension can claim gigabytes that the file does not hold:
                // the header check refuses those, so what passes is small.
                prop_assert!(info.bytes <= file.len() as u64);
                let _ = tchlab::formats::gguf::read_tensor(&handle, &meta, info);
            }
            let _ = tchlab::checkpoint::gguf_family(&meta);
            let _ = meta.strings("tokenizer.ggml.tokens");
        }
    }
}
