//! JSON lines: one record per line, appended as it happens so a crash loses at most one line.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Result, format_error, io_error};

/// Appends `record` as one line to `path`, creating the file when needed.
pub fn append<T: Serialize>(path: &Path, record: &T) -> Result<()> {
    let mut line = serde_json::to_string(record).map_err(|e| format_error(path, e))?;
    line.push('\n');
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io_error(path))?;
    file.write_all(line.as_bytes()).map_err(io_error(path))
}

/// Reads every record of `path`; a line that does not parse is an error naming its number.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut out = vec![];
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_error(path))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| format_error(path, format!("line {}: {e}", n + 1)))?);
    }
    Ok(out)
}
