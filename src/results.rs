//! Results as `layerspec run --json` writes them, read back: one JSON object per line,
//! `{"scenario", "driver", "backend", "status", "detail"}` and, where known, `"kernel"` (the
//! kernel release the backend ran; for the model, the version whose rules it followed).
//! Keys other than these are ignored, so rows may gain keys.

use serde_json::Value;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest results file read.
const MAX_BYTES: u64 = 256 << 20;

/// Pass, fail or skip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RowStatus {
    /// Passed.
    Pass,
    /// Failed.
    Fail,
    /// Skipped.
    Skip,
}

impl RowStatus {
    /// `pass`, `fail` or `skip`.
    pub fn name(self) -> &'static str {
        match self {
            RowStatus::Pass => "pass",
            RowStatus::Fail => "fail",
            RowStatus::Skip => "skip",
        }
    }
}

/// One result row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Scenario name (its path below `scenarios/`, without `.toml`).
    pub scenario: String,
    /// Driver name.
    pub driver: String,
    /// Backend name.
    pub backend: String,
    /// Status.
    pub status: RowStatus,
    /// Why it failed or was skipped (empty on a pass).
    pub detail: String,
    /// The kernel the backend ran, where the row says.
    pub kernel: Option<String>,
}

/// A results line that is not a row, located (`file:line: message`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultsError {
    /// The input (`-` for stdin).
    pub file: PathBuf,
    /// Line, 1-based (0: the input as a whole).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ResultsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

impl std::error::Error for ResultsError {}

/// Parses the lines of one input; blank lines are skipped.
pub fn parse(file: &Path, text: &str) -> Result<Vec<Row>, ResultsError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| ResultsError {
            file: file.to_path_buf(),
            line: i + 1,
            message,
        };
        let v: Value = serde_json::from_str(line)
            .map_err(|e| err(format!("not a JSON object of `layerspec run --json`: {e}")))?;
        let field = |k: &str| -> Result<String, ResultsError> {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| err(format!("no string `{k}`")))
        };
        let status = match field("status")?.as_str() {
            "pass" => RowStatus::Pass,
            "fail" => RowStatus::Fail,
            "skip" => RowStatus::Skip,
            other => {
                return Err(err(format!(
                    "status `{other}`: expected pass, fail or skip"
                )))
            }
        };
        rows.push(Row {
            scenario: field("scenario")?,
            driver: field("driver")?,
            backend: field("backend")?,
            status,
            detail: v
                .get("detail")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            kernel: v.get("kernel").and_then(Value::as_str).map(str::to_string),
        });
    }
    Ok(rows)
}

/// Reads every input in order (`-`: standard input) and keeps the latest row of each
/// scenario x driver x backend x kernel: a later line, or a later input, wins.
pub fn read(inputs: &[PathBuf]) -> Result<Vec<Row>, ResultsError> {
    let mut all = Vec::new();
    for p in inputs {
        let whole = |message: String| ResultsError {
            file: p.clone(),
            line: 0,
            message,
        };
        let text = if p == Path::new("-") {
            let mut buf = String::new();
            std::io::stdin()
                .take(MAX_BYTES)
                .read_to_string(&mut buf)
                .map_err(|e| whole(format!("cannot read standard input: {e}")))?;
            buf
        } else {
            crate::catalogue::read_text(p, MAX_BYTES).map_err(whole)?
        };
        all.extend(parse(p, &text)?);
    }
    Ok(latest(all))
}

/// The last row of each scenario x driver x backend x kernel, in first-seen order.
pub fn latest(rows: Vec<Row>) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    let mut at: std::collections::HashMap<(String, String, String, Option<String>), usize> =
        std::collections::HashMap::new();
    for r in rows {
        let key = (
            r.scenario.clone(),
            r.driver.clone(),
            r.backend.clone(),
            r.kernel.clone(),
        );
        match at.get(&key) {
            Some(&i) => out[i] = r,
            None => {
                at.insert(key, out.len());
                out.push(r);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_and_the_latest_wins() {
        let text = r#"{"scenario":"a/b","driver":"overlay2","backend":"model","status":"fail","detail":"x"}

{"scenario":"a/b","driver":"overlay2","backend":"model","status":"pass","detail":"","kernel":"6.18","ms":3}
"#;
        let rows = latest(parse(Path::new("r.json"), text).unwrap());
        assert_eq!(rows.len(), 2, "the rows differ in kernel");
        let rows = latest(
            parse(
                Path::new("r.json"),
                &format!(
                    "{}\n{}",
                    text.lines().next().unwrap(),
                    text.lines().next().unwrap().replace("fail", "pass")
                ),
            )
            .unwrap(),
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, RowStatus::Pass);
    }

    #[test]
    fn bad_lines_are_located() {
        let e = parse(Path::new("r.json"), "\n{\"scenario\":\"a\"}\n").unwrap_err();
        assert_eq!(e.to_string(), "r.json:2: no string `status`");
        let e = parse(Path::new("r.json"), "PASS a\n").unwrap_err();
        assert!(
            e.to_string().starts_with("r.json:1: not a JSON object"),
            "{e}"
        );
        let e = parse(
            Path::new("r.json"),
            r#"{"scenario":"a","driver":"d","backend":"b","status":"ok"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("status `ok`"), "{e}");
    }
}
