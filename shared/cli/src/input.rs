//! Reading a JSONL file of input events.

use std::path::Path;

use anyhow::Context as _;
use underwrite_events::{Envelope, parse_input_line};

/// A line that could not be read as an input event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub reason: String,
    /// The line's text.
    pub text: String,
}

/// The events of a file and the lines rejected.
pub struct InputFile {
    /// Events, in file order.
    pub events: Vec<Envelope>,
    /// The 1-based line number of each event in `events`.
    pub lines: Vec<usize>,
    /// Rejected lines, in file order.
    pub rejected: Vec<Rejected>,
    /// SHA-256 of the file's bytes, hex.
    pub digest: String,
}

/// Reads and parses every line of `path`; blank lines are skipped. Ids must
/// be unique within the file: a repeated id is rejected on its later line.
pub fn read(path: &Path) -> anyhow::Result<InputFile> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("Failed to read input file {}", path.display()))?;
    let digest = sha256_hex(&bytes);
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("input file {} is not UTF-8: {e}", path.display()))?;
    let (events, lines, rejected) = parse_lines_numbered(&text);
    Ok(InputFile {
        events,
        lines,
        rejected,
        digest,
    })
}

/// Parses every line of `text` as an input event; blank lines are skipped.
/// Ids must be unique within the text: a repeated id is rejected on its
/// later line.
pub fn parse_lines(text: &str) -> (Vec<Envelope>, Vec<Rejected>) {
    let (events, _, rejected) = parse_lines_numbered(text);
    (events, rejected)
}

/// Parses as `parse_lines` does, and also returns the line number of each
/// event.
fn parse_lines_numbered(text: &str) -> (Vec<Envelope>, Vec<usize>, Vec<Rejected>) {
    let mut events = Vec::new();
    let mut lines = Vec::new();
    let mut rejected = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        match parse_input_line(line) {
            Ok(event) => {
                if let Some(first) = seen.insert(event.id.clone(), number) {
                    rejected.push(Rejected {
                        line: number,
                        reason: format!("duplicate id {:?}: first used on line {first}; every event needs its own id", event.id.as_str()),
                        text: line.to_string(),
                    });
                    seen.insert(event.id.clone(), first);
                } else {
                    events.push(event);
                    lines.push(number);
                }
            }
            Err(error) => rejected.push(Rejected {
                line: number,
                reason: error.to_string(),
                text: line.to_string(),
            }),
        }
    }
    (events, lines, rejected)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}
