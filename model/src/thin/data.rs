//! What a data block holds. The model does not keep bytes: every write stamps what it writes
//! with (step, device, virtual block), so a read can tell which write each part of a block
//! comes from, and the real side can write a pattern encoding the same stamp and decode it.

use serde::Serialize;
use std::fmt;
use std::sync::Arc;

/// Which write put some bytes there: the step's index in the trace, the thin device written
/// and the virtual block (of that device) the bytes were written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Stamp {
    /// Step index in the scenario's trace.
    pub step: u32,
    /// Thin device id the write went to.
    pub dev: u32,
    /// Virtual block of that device.
    pub block: u64,
}

/// A byte range of a block and what it holds (`None`: zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Piece {
    /// First byte, from the start of the block.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
    /// The write it holds, or zeros.
    pub stamp: Option<Stamp>,
}

/// The contents of one block (a data block, or a block read from a thin device).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum BlockData {
    /// All zeros: never written, discarded on the data device, or zeroed when provisioned.
    #[default]
    Zero,
    /// Entirely written by one whole-block write.
    Whole(Stamp),
    /// Several pieces, in byte order, covering the block.
    Pieces(Arc<[Piece]>),
}

impl BlockData {
    fn pieces(&self, block_bytes: u32) -> Vec<Piece> {
        match self {
            BlockData::Zero => vec![Piece {
                start: 0,
                end: block_bytes,
                stamp: None,
            }],
            BlockData::Whole(s) => vec![Piece {
                start: 0,
                end: block_bytes,
                stamp: Some(*s),
            }],
            BlockData::Pieces(p) => p.to_vec(),
        }
    }

    /// The block after writing bytes `start..end` of it with `stamp` (a read-modify-write of
    /// the rest, as the page cache does).
    pub fn overwrite(&self, block_bytes: u32, start: u32, end: u32, stamp: Stamp) -> BlockData {
        self.put(block_bytes, start, end, Some(stamp))
    }

    /// The block after bytes `start..end` of it are written with zeros.
    pub fn zero_range(&self, block_bytes: u32, start: u32, end: u32) -> BlockData {
        self.put(block_bytes, start, end, None)
    }

    fn put(&self, block_bytes: u32, start: u32, end: u32, stamp: Option<Stamp>) -> BlockData {
        let end = end.min(block_bytes);
        if start >= end {
            return self.clone();
        }
        if start == 0 && end == block_bytes {
            return stamp.map_or(BlockData::Zero, BlockData::Whole);
        }
        let mut out: Vec<Piece> = Vec::new();
        let mut push = |p: Piece| {
            if p.start >= p.end {
                return;
            }
            match out.last_mut() {
                Some(l) if l.stamp == p.stamp && l.end == p.start => l.end = p.end,
                _ => out.push(p),
            }
        };
        let mut placed = false;
        for p in self.pieces(block_bytes) {
            if p.end <= start || p.start >= end {
                if p.start >= end && !placed {
                    push(Piece { start, end, stamp });
                    placed = true;
                }
                push(p);
                continue;
            }
            push(Piece {
                start: p.start,
                end: start.max(p.start),
                stamp: p.stamp,
            });
            if !placed {
                push(Piece { start, end, stamp });
                placed = true;
            }
            push(Piece {
                start: end.min(p.end),
                end: p.end,
                stamp: p.stamp,
            });
        }
        match out.as_slice() {
            [one] if one.stamp.is_none() => BlockData::Zero,
            [one] => one.stamp.map_or(BlockData::Zero, BlockData::Whole),
            _ => BlockData::Pieces(out.into()),
        }
    }

    /// The writes visible in the block, as a read reports them: `"zero"` for zeros, else
    /// the step index; several sources in order (zeros first, then by step), joined by `+`.
    pub fn sources(&self) -> String {
        match self {
            BlockData::Zero => "zero".into(),
            BlockData::Whole(s) => s.step.to_string(),
            BlockData::Pieces(ps) => {
                let zero = ps.iter().any(|p| p.stamp.is_none());
                let mut steps: Vec<u32> =
                    ps.iter().filter_map(|p| p.stamp.map(|s| s.step)).collect();
                steps.sort_unstable();
                steps.dedup();
                let mut parts: Vec<String> = Vec::new();
                if zero {
                    parts.push("zero".into());
                }
                parts.extend(steps.iter().map(u32::to_string));
                parts.join("+")
            }
        }
    }
}

impl fmt::Display for BlockData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sources())
    }
}

impl Serialize for BlockData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Whether `text` is a well-formed read result: `"zero"`, a step index, or several of
/// those joined by `+` in the order [`BlockData::sources`] gives.
pub fn valid_sources(text: &str) -> bool {
    let mut last: Option<u64> = None;
    for (i, part) in text.split('+').enumerate() {
        if part == "zero" {
            if i != 0 {
                return false;
            }
            continue;
        }
        match part.parse::<u64>() {
            Ok(n) if part.chars().all(|c| c.is_ascii_digit()) && last.is_none_or(|l| n > l) => {
                last = Some(n)
            }
            _ => return false,
        }
    }
    !text.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(step: u32) -> Stamp {
        Stamp {
            step,
            dev: 0,
            block: 0,
        }
    }

    #[test]
    fn partial_writes_layer_on_the_block() {
        let b = BlockData::Zero;
        assert_eq!(b.overwrite(100, 0, 100, st(1)), BlockData::Whole(st(1)));
        let x = BlockData::Whole(st(2)).overwrite(100, 10, 20, st(5));
        assert_eq!(x.sources(), "2+5");
        let y = x.overwrite(100, 0, 100, st(7));
        assert_eq!(y.sources(), "7");
        let z = BlockData::Zero.overwrite(100, 90, 100, st(3));
        assert_eq!(z.sources(), "zero+3");
        // Covering the old piece exactly leaves one source.
        assert_eq!(z.overwrite(100, 0, 90, st(3)).sources(), "3");
        assert_eq!(z.overwrite(100, 50, 50, st(9)), z);
    }

    #[test]
    fn sources_syntax() {
        for ok in ["zero", "0", "12", "zero+3", "2+5", "zero+1+2"] {
            assert!(valid_sources(ok), "{ok}");
        }
        for bad in [
            "",
            "x",
            "5+2",
            "3+zero",
            "zero+zero",
            "+1",
            "1+",
            "-1",
            "1+1",
        ] {
            assert!(!valid_sources(bad), "{bad}");
        }
    }
}
