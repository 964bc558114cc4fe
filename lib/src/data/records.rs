//! Records of two named fields — a text and its label, a source and its target — from
//! CSV or TSV files with a header row, or from JSON lines.

use std::path::Path;

use crate::error::{Error, Result};

/// The `(first, second)` fields of every record of `path`: `.csv`, `.tsv` (a header row
/// names the columns) or `.jsonl`. The error names the file, the record and the field.
pub fn read(path: &Path, first: &str, second: &str) -> Result<Vec<(String, String)>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => read_delimited(path, b',', first, second),
        Some("tsv") => read_delimited(path, b'\t', first, second),
        Some("jsonl") | Some("json") => read_jsonl(path, first, second),
        _ => Err(Error::format(path, "the data must be .csv or .tsv (with a header row) or .jsonl")),
    }
}

fn read_delimited(path: &Path, delimiter: u8, first: &str, second: &str) -> Result<Vec<(String, String)>> {
    let text = crate::limits::read_bytes(path, crate::limits::MAX_TEXT_BYTES)?;
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).from_reader(text.as_slice());
    let headers = reader.headers().map_err(|e| Error::format(path, e.to_string()))?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| Error::format(path, format!("no column `{name}`; the header has {}", headers.iter().collect::<Vec<_>>().join(", "))))
    };
    let (a, b) = (column(first)?, column(second)?);
    reader
        .records()
        .enumerate()
        .map(|(i, r)| {
            let r = r.map_err(|e| Error::format(path, format!("record {}: {e}", i + 1)))?;
            Ok((r.get(a).unwrap_or("").to_string(), r.get(b).unwrap_or("").to_string()))
        })
        .collect()
}

fn read_jsonl(path: &Path, first: &str, second: &str) -> Result<Vec<(String, String)>> {
    let text = crate::limits::read_text(path, crate::limits::MAX_TEXT_BYTES)?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let record: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))?;
        let field = |name: &str| -> Result<String> {
            match &record[name] {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Null => Err(Error::format(path, format!("line {}: no field `{name}`", i + 1))),
                other => Ok(other.to_string()),
            }
        };
        out.push((field(first)?, field(second)?));
    }
    Ok(out)
}
