//! File contents on the real side, streamed both ways: a file's digest read with
//! `SEEK_DATA`/`SEEK_HOLE` and chunked `pread`s into the model's [`ContentHasher`] (so a
//! sparse file costs what its data costs, and the filesystem's hole layout does not matter:
//! the hasher's forms depend on the bytes only), and [`Content`] written in chunks without
//! ever holding it whole.

use crate::sys;
use layerspec_model::{Content, ContentHasher, WRITE_PIECE};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// Bytes read or written at a time: the model's [`WRITE_PIECE`].
pub const CHUNK: usize = WRITE_PIECE as usize;

/// The hasher fed bytes `start..start + len` of `file` (offsets from `start`); what lies
/// past the end of the file, or in a hole, counts as zeros.
pub fn hash_range(file: &File, start: u64, len: u64) -> io::Result<ContentHasher> {
    let mut h = ContentHasher::new(len);
    let end = start.saturating_add(len);
    let mut buf = vec![0u8; CHUNK];
    let mut at = start;
    while at < end {
        let (data, hole) = match sys::seek(file, at, true) {
            Ok(None) => {
                // tmpfs (6.18) does not find data in a file's page that ends at 2^63, the
                // last one below LLONG_MAX: `mapping_seek_hole_data` rounds the page's end
                // up to 2^63, which overflows `loff_t`, and goes on to ENXIO. So the last
                // page is read in any case (a hole reads as zeros, which count as a hole).
                let last = (end - 1) & !(layerspec_model::DIGEST_PAGE - 1);
                (at.max(last), end)
            }
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
/// with a write loop (`write_all`): the calls the model's `write_calls` follows.
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

#[cfg(test)]
mod tests {
    use super::*;
    use layerspec_model::FileData;

    /// A file of `LLONG_MAX` bytes with data at both ends, on tmpfs (holes) and as the
    /// model holds it: the same text.
    #[test]
    fn holes_read_as_the_model_digests_them() {
        let max = i64::MAX as u64;
        // tmpfs: files up to LLONG_MAX.
        let dir = std::path::Path::new("/dev/shm")
            .join(format!("layerspec-content-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("big");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.write_all_at(b"abc", 0).unwrap();
        f.set_len(max).unwrap();
        f.write_all_at(b"x", max - 1).unwrap();
        let mut model = FileData::from_bytes(b"abc".to_vec());
        model.truncate(max);
        model.write(max - 1, &Content::Bytes(b"x".to_vec()));
        let real = hash_range(&f, 0, max).unwrap().text();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(real, model.text());
    }
}
