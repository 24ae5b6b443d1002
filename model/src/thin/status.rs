//! The pool and thin status lines, field by field as the kernel prints them (THIN3,
//! `pool_status` and `thin_status` in dm-thin.c), and a parser of those lines whose errors
//! name the field that is wrong.
//!
//! Pool: `<transaction id> <used meta>/<total meta> <used data>/<total data> <held root|->
//! ro|rw|out_of_data_space ignore_discard|discard_passdown|no_discard_passdown
//! error_if_no_space|queue_if_no_space needs_check|- <metadata low watermark> ` (the kernel
//! ends every field with a space, the last one too). Thin: `<mapped sectors> <highest mapped
//! sector|->`.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// The pool's mode as the status shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PoolMode {
    /// `rw`: normal operation.
    Rw,
    /// `ro`: read-only (after a metadata failure, or out of metadata space).
    Ro,
    /// `out_of_data_space`: no free data block; writes needing one fail or queue.
    OutOfDataSpace,
}

/// How discards are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiscardMode {
    /// `ignore_discard`: not supported.
    IgnoreDiscard,
    /// `discard_passdown`: unmapped blocks are discarded on the data device too.
    DiscardPassdown,
    /// `no_discard_passdown`: blocks are unmapped only.
    NoDiscardPassdown,
}

/// What happens to writes when the data device is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoSpaceMode {
    /// `queue_if_no_space`: they wait (for `no_space_timeout`).
    QueueIfNoSpace,
    /// `error_if_no_space`: they fail with ENOSPC.
    ErrorIfNoSpace,
}

macro_rules! words {
    ($t:ty { $($v:ident = $w:expr),* $(,)? }) => {
        impl $t {
            /// The word in the status line.
            pub fn word(self) -> &'static str {
                match self { $(Self::$v => $w,)* }
            }
            fn from_word(w: &str) -> Option<Self> {
                match w { $($w => Some(Self::$v),)* _ => None }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.word())
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.word())
            }
        }
    };
}

words!(PoolMode { Rw = "rw", Ro = "ro", OutOfDataSpace = "out_of_data_space" });
words!(DiscardMode {
    IgnoreDiscard = "ignore_discard",
    DiscardPassdown = "discard_passdown",
    NoDiscardPassdown = "no_discard_passdown",
});
words!(NoSpaceMode {
    QueueIfNoSpace = "queue_if_no_space",
    ErrorIfNoSpace = "error_if_no_space",
});

/// The fields of a pool status line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    /// The transaction id userspace last set.
    pub transaction_id: u64,
    /// Metadata blocks in use.
    pub used_metadata_blocks: u64,
    /// Metadata blocks in all.
    pub total_metadata_blocks: u64,
    /// Data blocks in use.
    pub used_data_blocks: u64,
    /// Data blocks in all.
    pub total_data_blocks: u64,
    /// The metadata snapshot's root block (`reserve_metadata_snap`), or none (`-`).
    pub held_root: Option<u64>,
    /// `rw`, `ro` or `out_of_data_space`.
    pub mode: PoolMode,
    /// The discard handling.
    pub discard: DiscardMode,
    /// The no-space handling.
    pub no_space: NoSpaceMode,
    /// Whether the metadata needs `thin_check` (`needs_check`, else `-`).
    pub needs_check: bool,
    /// Free metadata blocks at which the pool warns.
    pub metadata_low_watermark: u64,
}

/// The fields of a thin device's status line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ThinStatus {
    /// Mapped blocks times the block size.
    pub mapped_sectors: u64,
    /// The last sector of the highest mapped block, or none (`-`).
    pub highest_mapped_sector: Option<u64>,
}

impl fmt::Display for PoolStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} {}/{} ",
            self.transaction_id,
            self.used_metadata_blocks,
            self.total_metadata_blocks,
            self.used_data_blocks,
            self.total_data_blocks
        )?;
        match self.held_root {
            Some(r) => write!(f, "{r} ")?,
            None => f.write_str("- ")?,
        }
        write!(
            f,
            "{} {} {} {} {} ",
            self.mode,
            self.discard,
            self.no_space,
            if self.needs_check { "needs_check" } else { "-" },
            self.metadata_low_watermark
        )
    }
}

impl fmt::Display for ThinStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.mapped_sectors)?;
        match self.highest_mapped_sector {
            Some(h) => write!(f, "{h}"),
            None => f.write_str("-"),
        }
    }
}

/// A status line that does not parse: the field, what was there, what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusError {
    /// The field's name (`used_data_blocks`, `mode`, ...).
    pub field: &'static str,
    /// The text found there (empty when the line ended first).
    pub found: String,
    /// What the field holds.
    pub expected: &'static str,
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.found.is_empty() {
            write!(
                f,
                "status field `{}` is missing (expected {})",
                self.field, self.expected
            )
        } else {
            write!(
                f,
                "status field `{}`: `{}` is not {}",
                self.field, self.found, self.expected
            )
        }
    }
}

impl std::error::Error for StatusError {}

struct Fields<'a>(std::str::SplitAsciiWhitespace<'a>);

impl<'a> Fields<'a> {
    fn next(
        &mut self,
        field: &'static str,
        expected: &'static str,
    ) -> Result<&'a str, StatusError> {
        self.0.next().ok_or(StatusError {
            field,
            found: String::new(),
            expected,
        })
    }

    fn number(&mut self, field: &'static str) -> Result<u64, StatusError> {
        let w = self.next(field, "a number")?;
        parse_u64(w).ok_or_else(|| bad(field, w, "a number"))
    }

    fn fraction(
        &mut self,
        used: &'static str,
        total: &'static str,
    ) -> Result<(u64, u64), StatusError> {
        let w = self.next(used, "<used>/<total>")?;
        let Some((u, t)) = w.split_once('/') else {
            return Err(bad(used, w, "<used>/<total>"));
        };
        let u =
            parse_u64(u).ok_or_else(|| bad(used, w, "<used>/<total> with a number before /"))?;
        let t =
            parse_u64(t).ok_or_else(|| bad(total, w, "<used>/<total> with a number after /"))?;
        Ok((u, t))
    }

    fn end(&mut self, after: &'static str) -> Result<(), StatusError> {
        match self.0.next() {
            None => Ok(()),
            Some(w) => Err(bad(after, w, "the last field (nothing may follow it)")),
        }
    }
}

fn parse_u64(w: &str) -> Option<u64> {
    if w.chars().all(|c| c.is_ascii_digit()) {
        w.parse().ok()
    } else {
        None
    }
}

fn bad(field: &'static str, found: &str, expected: &'static str) -> StatusError {
    StatusError {
        field,
        found: found.to_string(),
        expected,
    }
}

impl FromStr for PoolStatus {
    type Err = StatusError;

    /// Parses the status text of a `thin-pool` target (what follows `<start> <length>
    /// thin-pool` in `dmsetup status`). A pool in fail mode prints only `Fail`, which is an
    /// error here, naming the field `transaction_id`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut f = Fields(s.split_ascii_whitespace());
        let first = f.next("transaction_id", "a number")?;
        if first == "Fail" || first == "Error" {
            return Err(bad(
                "transaction_id",
                first,
                "a number (the pool reports no fields in fail mode)",
            ));
        }
        let transaction_id =
            parse_u64(first).ok_or_else(|| bad("transaction_id", first, "a number"))?;
        let (used_metadata_blocks, total_metadata_blocks) =
            f.fraction("used_metadata_blocks", "total_metadata_blocks")?;
        let (used_data_blocks, total_data_blocks) =
            f.fraction("used_data_blocks", "total_data_blocks")?;
        let w = f.next("held_root", "a block number or -")?;
        let held_root = if w == "-" {
            None
        } else {
            Some(parse_u64(w).ok_or_else(|| bad("held_root", w, "a block number or -"))?)
        };
        let w = f.next("mode", "rw, ro or out_of_data_space")?;
        let mode =
            PoolMode::from_word(w).ok_or_else(|| bad("mode", w, "rw, ro or out_of_data_space"))?;
        let expect = "ignore_discard, discard_passdown or no_discard_passdown";
        let w = f.next("discard", expect)?;
        let discard = DiscardMode::from_word(w).ok_or_else(|| bad("discard", w, expect))?;
        let expect = "queue_if_no_space or error_if_no_space";
        let w = f.next("no_space", expect)?;
        let no_space = NoSpaceMode::from_word(w).ok_or_else(|| bad("no_space", w, expect))?;
        let w = f.next("needs_check", "needs_check or -")?;
        let needs_check = match w {
            "needs_check" => true,
            "-" => false,
            _ => return Err(bad("needs_check", w, "needs_check or -")),
        };
        let metadata_low_watermark = f.number("metadata_low_watermark")?;
        f.end("metadata_low_watermark")?;
        Ok(PoolStatus {
            transaction_id,
            used_metadata_blocks,
            total_metadata_blocks,
            used_data_blocks,
            total_data_blocks,
            held_root,
            mode,
            discard,
            no_space,
            needs_check,
            metadata_low_watermark,
        })
    }
}

impl FromStr for ThinStatus {
    type Err = StatusError;

    /// Parses the status text of a `thin` target.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut f = Fields(s.split_ascii_whitespace());
        let first = f.next("mapped_sectors", "a number")?;
        let mapped_sectors =
            parse_u64(first).ok_or_else(|| bad("mapped_sectors", first, "a number"))?;
        let w = f.next("highest_mapped_sector", "a sector number or -")?;
        let highest_mapped_sector = if w == "-" {
            None
        } else {
            Some(
                parse_u64(w)
                    .ok_or_else(|| bad("highest_mapped_sector", w, "a sector number or -"))?,
            )
        };
        f.end("highest_mapped_sector")?;
        Ok(ThinStatus {
            mapped_sectors,
            highest_mapped_sector,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PoolStatus {
        PoolStatus {
            transaction_id: 0,
            used_metadata_blocks: 10,
            total_metadata_blocks: 4096,
            used_data_blocks: 7,
            total_data_blocks: 16,
            held_root: None,
            mode: PoolMode::Rw,
            discard: DiscardMode::DiscardPassdown,
            no_space: NoSpaceMode::QueueIfNoSpace,
            needs_check: false,
            metadata_low_watermark: 1024,
        }
    }

    #[test]
    fn pool_line_round_trips_in_the_kernels_format() {
        let s = sample();
        let line = s.to_string();
        assert_eq!(
            line,
            "0 10/4096 7/16 - rw discard_passdown queue_if_no_space - 1024 "
        );
        assert_eq!(line.parse::<PoolStatus>(), Ok(s));
        let t = PoolStatus {
            held_root: Some(42),
            mode: PoolMode::OutOfDataSpace,
            discard: DiscardMode::IgnoreDiscard,
            no_space: NoSpaceMode::ErrorIfNoSpace,
            needs_check: true,
            ..s
        };
        assert_eq!(
            t.to_string(),
            "0 10/4096 7/16 42 out_of_data_space ignore_discard error_if_no_space needs_check 1024 "
        );
        assert_eq!(t.to_string().trim_end().parse::<PoolStatus>(), Ok(t));
    }

    #[test]
    fn pool_errors_name_the_field() {
        let cases = [
            ("", "transaction_id"),
            ("Fail", "transaction_id"),
            (
                "x 1/2 3/4 - rw discard_passdown queue_if_no_space - 1",
                "transaction_id",
            ),
            (
                "0 1-2 3/4 - rw discard_passdown queue_if_no_space - 1",
                "used_metadata_blocks",
            ),
            (
                "0 1/x 3/4 - rw discard_passdown queue_if_no_space - 1",
                "total_metadata_blocks",
            ),
            (
                "0 1/2 y/4 - rw discard_passdown queue_if_no_space - 1",
                "used_data_blocks",
            ),
            (
                "0 1/2 3/4 q rw discard_passdown queue_if_no_space - 1",
                "held_root",
            ),
            (
                "0 1/2 3/4 - wo discard_passdown queue_if_no_space - 1",
                "mode",
            ),
            ("0 1/2 3/4 - rw discard queue_if_no_space - 1", "discard"),
            ("0 1/2 3/4 - rw discard_passdown queue - 1", "no_space"),
            (
                "0 1/2 3/4 - rw discard_passdown queue_if_no_space ok 1",
                "needs_check",
            ),
            (
                "0 1/2 3/4 - rw discard_passdown queue_if_no_space -",
                "metadata_low_watermark",
            ),
            (
                "0 1/2 3/4 - rw discard_passdown queue_if_no_space - 1 x",
                "metadata_low_watermark",
            ),
        ];
        for (line, field) in cases {
            let e = line.parse::<PoolStatus>().unwrap_err();
            assert_eq!(e.field, field, "{line:?}: {e}");
            assert!(e.to_string().contains(field));
        }
    }

    #[test]
    fn thin_line() {
        let t = ThinStatus {
            mapped_sectors: 640,
            highest_mapped_sector: Some(12927),
        };
        assert_eq!(t.to_string(), "640 12927");
        assert_eq!("640 12927".parse::<ThinStatus>(), Ok(t));
        let e = ThinStatus {
            mapped_sectors: 0,
            highest_mapped_sector: None,
        };
        assert_eq!(e.to_string(), "0 -");
        assert_eq!("0 -".parse::<ThinStatus>(), Ok(e));
        assert_eq!(
            "".parse::<ThinStatus>().unwrap_err().field,
            "mapped_sectors"
        );
        assert_eq!(
            "1 z".parse::<ThinStatus>().unwrap_err().field,
            "highest_mapped_sector"
        );
        assert_eq!(
            "1 2 3".parse::<ThinStatus>().unwrap_err().field,
            "highest_mapped_sector"
        );
    }
}
