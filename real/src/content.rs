//! File contents on the real side, streamed both ways: a file's digest read with
//! `SEEK_DATA`/`SEEK_HOLE` and chunked `pread`s into the model's [`ContentHasher`] (so a
//! sparse file costs what its data costs, and the filesystem's hole layout does not matter:
//! the hasher's forms depend on the bytes only), and [`Content`] written in chunks without
//! ever holding it whole.

use crate::sys;
use layerspec_model::{Content, ContentHasher, WRITE_PIECE};
use std::fs::File;
use std::io::{self, Seek, Write};
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

/// Writes `data` to `out` from its current position, [`WRITE_PIECE`] bytes at a time, each
/// with a write loop: the calls the model's `write_calls` follows. A piece the filesystem
/// refuses for space (ENOSPC) is written again page by page, each write up to the next page
/// boundary, until one is refused too: so the bytes that land are every page there was room
/// for, whatever size of page-cache folio the kernel would have taken for the whole piece
/// (ext4 since 6.16 reserves a large folio's blocks at once: a 1 MiB piece with 255 blocks
/// free lands none of them). `append`: `out` was opened with `O_APPEND`, so the data lands
/// at the end of the file, not at the stream position.
pub fn write_content(out: &mut File, data: &Content, append: bool) -> io::Result<()> {
    if let Content::Bytes(b) = data {
        for piece in b.chunks(CHUNK) {
            write_piece(out, piece, append)?;
        }
        return Ok(());
    }
    let mut buf = vec![0u8; CHUNK.min(data.len() as usize)];
    let mut pos = 0;
    while pos < data.len() {
        let n = (data.len() - pos).min(CHUNK as u64) as usize;
        data.fill(pos, &mut buf[..n]);
        write_piece(out, &buf[..n], append)?;
        pos += n as u64;
    }
    Ok(())
}

/// The page size pieces are cut to after an ENOSPC.
const PAGE: u64 = 4096;

/// One piece with its write loop; after an ENOSPC, page by page (see [`write_content`]).
fn write_piece(out: &mut File, mut rest: &[u8], append: bool) -> io::Result<()> {
    let mut paged = false;
    while !rest.is_empty() {
        let want = if paged {
            let at = if append {
                out.metadata()?.len()
            } else {
                out.stream_position()?
            };
            ((PAGE - at % PAGE) as usize).min(rest.len())
        } else {
            rest.len()
        };
        match out.write(&rest[..want]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && !paged && want as u64 > PAGE => {
                paged = true;
            }
            Err(e) => return Err(e),
        }
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
