//! The claims catalogue, `spec/claims.toml`: what each claim id a scenario cites states,
//! where it comes from, and for which kernels it holds. The file is built into the binary
//! ([`EMBEDDED`]), so a checkout needs nothing beside it; `--catalogue FILE` reads another.
//!
//! ```toml
//! [[claim]]
//! id = "OVL4"
//! statement = "Renaming a lower directory fails with EXDEV unless redirect_dir=on ..."
//! sources = ["overlayfs.rst: renaming directories", "measured here: rename/lower_dir_exdev"]
//! kernel = ">= 6.6"   # optional
//! ```

use crate::scenario::KernelRange;
use layerspec_model::KernelVersion;
use serde::Deserialize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The catalogue's path in the repository, as errors about the built-in copy name it.
pub const EMBEDDED_PATH: &str = "spec/claims.toml";

/// The catalogue as built into the binary.
pub const EMBEDDED: &str = include_str!("../spec/claims.toml");

/// Largest catalogue file read with `--catalogue`.
const MAX_BYTES: u64 = 4 << 20;

/// One claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The id scenarios cite (`OVL4`).
    pub id: String,
    /// What holds.
    pub statement: String,
    /// Where it comes from.
    pub sources: Vec<String>,
    /// The kernel versions it holds for (`None`: any).
    pub kernel: Option<KernelRange>,
    /// Line of its `id` in the catalogue (1-based).
    pub line: usize,
    /// Column of its `id` (1-based).
    pub column: usize,
}

impl Claim {
    /// The scenarios its `sources` name as `measured here: <scenario>`.
    pub fn measured_by(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().filter_map(|s| {
            let rest = s.strip_prefix("measured here: ")?;
            let name = rest.split([' ', ',']).next()?;
            name.contains('/').then_some(name)
        })
    }
}

/// The catalogue: its file and its claims in file order.
#[derive(Clone, Debug)]
pub struct Catalogue {
    /// Where it was read from ([`EMBEDDED_PATH`] for the built-in copy).
    pub file: PathBuf,
    /// The claims, in file order.
    pub claims: Vec<Claim>,
}

/// A located problem in a scenario or in the catalogue: the parser's own error type.
pub use crate::scenario::ParseError as Problem;

impl Problem {
    /// A problem at byte `offset` of `text`, the contents of `file`.
    pub fn at(file: &Path, text: &str, offset: usize, message: impl Into<String>) -> Problem {
        let (line, column) = line_col(text, offset);
        Problem {
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    claim: Vec<Spanned<ClaimDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimDoc {
    id: Spanned<String>,
    statement: Spanned<String>,
    sources: Spanned<Vec<Spanned<String>>>,
    kernel: Option<Spanned<String>>,
}

impl Catalogue {
    /// The catalogue built into the binary.
    pub fn embedded() -> Result<Catalogue, Vec<Problem>> {
        Catalogue::parse(Path::new(EMBEDDED_PATH), EMBEDDED)
    }

    /// `path`'s catalogue, or the built-in one when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Catalogue, Vec<Problem>> {
        let Some(path) = path else {
            return Catalogue::embedded();
        };
        let text = read_text(path, MAX_BYTES).map_err(|e| {
            vec![Problem {
                file: path.to_path_buf(),
                line: 1,
                column: 1,
                message: e,
            }]
        })?;
        Catalogue::parse(path, &text)
    }

    /// Parses a catalogue; every problem is returned, located.
    pub fn parse(file: &Path, text: &str) -> Result<Catalogue, Vec<Problem>> {
        let at = |span: Range<usize>, m: String| Problem::at(file, text, span.start, m);
        let doc: Doc = toml::from_str(text)
            .map_err(|e| vec![at(e.span().unwrap_or(0..0), e.message().trim().to_string())])?;
        let mut problems = Vec::new();
        let mut claims: Vec<Claim> = Vec::new();
        for c in doc.claim {
            let span = c.span();
            let c = c.into_inner();
            let id = c.id.get_ref().trim();
            if !crate::claims::is_id(id) {
                problems.push(at(
                    c.id.span(),
                    format!("claim id `{id}`: expected capital letters, then digits (`OVL4`)"),
                ));
            } else if let Some(first) = claims.iter().find(|k| k.id == id) {
                problems.push(at(
                    c.id.span(),
                    format!("duplicate claim id `{id}` (first at line {})", first.line),
                ));
            }
            if c.statement.get_ref().trim().is_empty() {
                problems.push(at(c.statement.span(), format!("`{id}`: empty statement")));
            }
            let sources_span = c.sources.span();
            let sources: Vec<Spanned<String>> = c.sources.into_inner();
            if sources.is_empty() {
                problems.push(at(
                    sources_span,
                    format!("`{id}`: `sources` must name at least one source"),
                ));
            }
            for s in sources.iter().filter(|s| s.get_ref().trim().is_empty()) {
                problems.push(at(s.span(), format!("`{id}`: empty source")));
            }
            let kernel = match &c.kernel {
                None => None,
                Some(k) => match parse_range(k.get_ref()) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        problems.push(at(k.span(), format!("`{id}`: kernel: {e}")));
                        None
                    }
                },
            };
            let (line, column) = line_col(text, c.id.span().start.max(span.start));
            claims.push(Claim {
                id: id.to_string(),
                statement: c.statement.into_inner().trim().to_string(),
                sources: sources
                    .into_iter()
                    .map(|s| s.into_inner().trim().to_string())
                    .collect(),
                kernel,
                line,
                column,
            });
        }
        if problems.is_empty() {
            Ok(Catalogue {
                file: file.to_path_buf(),
                claims,
            })
        } else {
            Err(problems)
        }
    }

    /// The claim with this id.
    pub fn get(&self, id: &str) -> Option<&Claim> {
        self.claims.iter().find(|c| c.id == id)
    }

    /// A problem located at `claim`'s id.
    pub fn problem_at(&self, claim: &Claim, message: impl Into<String>) -> Problem {
        Problem {
            file: self.file.clone(),
            line: claim.line,
            column: claim.column,
            message: message.into(),
        }
    }
}

/// `">= 6.6"`, `"< 6.6"` or both, comma-separated, on `major.minor`.
pub fn parse_range(text: &str) -> Result<KernelRange, String> {
    let mut range = KernelRange {
        min: None,
        below: None,
    };
    for part in text.split(',').map(str::trim) {
        let (slot, v) = if let Some(v) = part.strip_prefix(">=") {
            (&mut range.min, v)
        } else if let Some(v) = part.strip_prefix('<') {
            (&mut range.below, v)
        } else {
            return Err(format!(
                "`{part}`: expected `>= X.Y` or `< X.Y` (comma-separated)"
            ));
        };
        if slot.is_some() {
            return Err(format!("`{part}`: a bound given twice"));
        }
        *slot = Some(version(v.trim())?);
    }
    if let (Some(m), Some(b)) = (range.min, range.below) {
        if m >= b {
            return Err(format!("no version is >= {m} and < {b}"));
        }
    }
    Ok(range)
}

fn version(v: &str) -> Result<KernelVersion, String> {
    let bad = || format!("`{v}`: expected a version `major.minor` such as 6.6");
    let (major, minor) = v.split_once('.').ok_or_else(bad)?;
    let n = |s: &str| -> Result<u32, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    Ok(KernelVersion::new(n(major)?, n(minor)?))
}

/// The text of `path`, a regular file of at most `max` bytes (never a FIFO or a device:
/// the file is opened without blocking and checked on the open descriptor).
pub fn read_text(path: &Path, max: u64) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() as u64 > max {
        return Err(format!("larger than the limit of {max} bytes"));
    }
    String::from_utf8(buf).map_err(|e| format!("not UTF-8 text: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_catalogue_parses() {
        let c = Catalogue::embedded().unwrap_or_else(|p| panic!("{p:?}"));
        assert!(c.get("OVL4").is_some() && c.get("S26").is_some());
        let uuid = c.get("LS6").expect("the uuid rule");
        assert_eq!(uuid.kernel.as_ref().unwrap().to_string(), ">= 6.6");
    }

    #[test]
    fn catalogue_problems_are_located() {
        let text = "[[claim]]\nid = \"X1\"\nstatement = \"s\"\nsources = [\"a\"]\n\n\
                    [[claim]]\nid = \"X1\"\nstatement = \" \"\nsources = []\nkernel = \"> 6\"\n";
        let p = Catalogue::parse(Path::new("c.toml"), text).unwrap_err();
        let lines: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].starts_with("c.toml:7:6: duplicate claim id `X1`"));
        assert!(lines[1].starts_with("c.toml:8:13: `X1`: empty statement"));
        assert!(lines[2].starts_with("c.toml:9:11: `X1`: `sources`"));
        assert!(lines[3].starts_with("c.toml:10:10: `X1`: kernel: `> 6`"));
        let p = Catalogue::parse(Path::new("c.toml"), "[[claim]]\nid = \"x\"\n").unwrap_err();
        assert!(p[0].to_string().starts_with("c.toml:1:1:"), "{p:?}");
        let p = Catalogue::parse(
            Path::new("c.toml"),
            "[[claim]]\nid = \"ovl\"\nstatement = \"s\"\nsources = [\"a\"]\ncolour = 1\n",
        )
        .unwrap_err();
        assert!(p[0].to_string().contains("colour"), "{p:?}");
    }

    #[test]
    fn kernel_ranges_parse_as_scenario_files_write_them() {
        assert_eq!(
            parse_range(">= 5.12, < 6.6").unwrap().to_string(),
            ">= 5.12, < 6.6"
        );
        assert_eq!(parse_range("< 6.6").unwrap().to_string(), "< 6.6");
        assert!(parse_range(">= 6.6, < 6.1").is_err());
        assert!(parse_range(">= 6").is_err());
        assert!(parse_range(">= 6.6, >= 6.7").is_err());
    }

    #[test]
    fn measured_by_names_only_scenario_paths() {
        let c = Claim {
            id: "X1".into(),
            statement: "s".into(),
            sources: vec![
                "measured here: a/b (fuzz)".into(),
                "measured here: 501 layers give EINVAL".into(),
                "moby#1".into(),
            ],
            kernel: None,
            line: 1,
            column: 1,
        };
        assert_eq!(c.measured_by().collect::<Vec<_>>(), vec!["a/b"]);
    }
}
