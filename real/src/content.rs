//! File contents on the real side, streamed both ways: a file's digest read with
//! `SEEK_DATA`/`SEEK_HOLE` and chunked `pread`s into the model's [`ContentHasher`] (so a
//! sparse file costs what its data costs, and the filesystem's hole layout does not matter:
//! the hasher's forms depend on the bytes only), and [`Content`] written in chunks without
//! ever holding it whole.

use crate::sys;
use layerspec_model::{Content, ContentHasher};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// Bytes read or written at a time.
pub const CHUNK: usize = 1 << 20;

/// The hasher fed bytes `start..start + len` of `file` (offsets from `start`); what lies
/// past the end of the file, or in a hole, counts as zeros.
pub fn hash_range(file: &File, start: u64, len: u64) -> io::Result<ContentHasher> {
    let mut h = ContentHasher::new(len);
    let end = start.saturating_add(len);
    let mut buf = vec![0u8; CHUNK];
    let mut at = start;
    while at < end {
        let (data, hole) = match sys::seek(file, at, true) {
            Ok(None) => break,
            Ok(Some(d)) => (d, sys::seek(file, d, false)?.unwrap_or(end)),
            // No SEEK_DATA here: everything is data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (at, end),
            Err(e) => return Err(e),
        };
        if data >= end {
            break;
        }
        let stop = hole.min(end);
        let mut pos = data;
        while pos < stop {
            let want = (stop - pos).min(CHUNK as u64) as usize;
            let n = file.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                return Ok(h);
            }
            h.update(pos - start, &buf[..n]);
            pos += n as u64;
        }
        at = stop.max(at + 1);
    }
    Ok(h)
}

/// Writes `data` to `out` from its current position, [`CHUNK`] bytes at a time, each
/// with a write loop (`write_all`): the model's `write` step follows these calls.
pub fn write_content(out: &mut impl Write, data: &Content) -> io::Result<()> {
    if let Content::Bytes(b) = data {
        for piece in b.chunks(CHUNK) {
            out.write_all(piece)?;
        }
        return Ok(());
    }
    let mut buf = vec![0u8; CHUNK.min(data.len() as usize)];
    let mut pos = 0;
    while pos < data.len() {
        let n = (data.len() - pos).min(CHUNK as u64) as usize;
        data.fill(pos, &mut buf[..n]);
        out.write_all(&buf[..n])?;
        pos += n as u64;
    }
    Ok(())
}
