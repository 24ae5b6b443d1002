//! A regular file's contents, sparse: a logical length and non-overlapping extents of data,
//! everything between them a hole that reads as zeros. An extent holds literal bytes
//! (shared) or a window of the deterministic pseudo-random stream of a seed
//! ([`crate::pseudo_random_at`]), so a `size = N` entry or write costs O(1) memory whatever
//! N is, and a write far past the end costs nothing for the hole it leaves.
//!
//! Clones share the extents until one of them is changed (copy-up and commit clone files).
//! Equality is by contents, not by how they are cut into extents.

use crate::digest::{pseudo_random_at, ContentHasher};
use crate::step::Content;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// Where an extent's bytes come from.
#[derive(Clone, Debug)]
enum Source {
    /// `buf[start..start + len]`.
    Bytes { buf: Arc<[u8]>, start: usize },
    /// Bytes `pos..pos + len` of the pseudo-random stream of `seed`.
    Random { seed: u64, pos: u64 },
    /// Zeros a filesystem holds as data, not as a hole: pages a copy-up wrote or a
    /// truncate kept ([`FileData::fill_holes`]). They read as a hole does and digest as one;
    /// only page accounting ([`FileData::pages`]) tells them apart.
    Zeros,
}

/// One run of data.
#[derive(Clone, Debug)]
struct Extent {
    len: u64,
    src: Source,
}

impl Extent {
    /// The extent without its first `skip` bytes and cut to `len`.
    fn window(&self, skip: u64, len: u64) -> Extent {
        let src = match &self.src {
            Source::Bytes { buf, start } => Source::Bytes {
                buf: Arc::clone(buf),
                start: start + skip as usize,
            },
            Source::Random { seed, pos } => Source::Random {
                seed: *seed,
                pos: pos.wrapping_add(skip),
            },
            Source::Zeros => Source::Zeros,
        };
        Extent { len, src }
    }

    /// Copies bytes `skip..skip + out.len()` of the extent into `out`.
    fn copy_to(&self, skip: u64, out: &mut [u8]) {
        match &self.src {
            Source::Bytes { buf, start } => {
                let from = start + skip as usize;
                out.copy_from_slice(&buf[from..from + out.len()]);
            }
            Source::Random { seed, pos } => pseudo_random_at(*seed, pos.wrapping_add(skip), out),
            Source::Zeros => out.fill(0),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Extents {
    /// By start offset; none empty, none overlapping, all below the length.
    map: BTreeMap<u64, Extent>,
    /// The digest texts, computed once for these contents: (`digest`, `text`).
    digests: OnceLock<(String, String)>,
}

/// A regular file's contents (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct FileData {
    len: u64,
    extents: Arc<Extents>,
}

/// Bytes handled at a time when contents are streamed (digests, comparisons).
const CHUNK: u64 = 1 << 16;

impl FileData {
    /// Empty contents.
    pub fn new() -> FileData {
        FileData::default()
    }

    /// Contents as a scenario states them.
    pub fn from_content(c: &Content) -> FileData {
        let mut d = FileData::new();
        d.write(0, c);
        d
    }

    /// Exactly these bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> FileData {
        FileData::from_content(&Content::Bytes(bytes))
    }

    /// The length (`st_size`).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the length is 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `other` is this very value's clone, unchanged since (a cheap "same").
    pub fn shares(&self, other: &FileData) -> bool {
        self.len == other.len && Arc::ptr_eq(&self.extents, &other.extents)
    }

    fn map_mut(&mut self) -> &mut BTreeMap<u64, Extent> {
        let e = Arc::make_mut(&mut self.extents);
        e.digests = OnceLock::new();
        &mut e.map
    }

    /// Where the extents reaching `start` or beyond begin: the start of the extent holding
    /// `start`, or `start` itself.
    fn first_overlapping(&self, start: u64) -> u64 {
        self.extents
            .map
            .range(..start)
            .next_back()
            .filter(|(&s, e)| s + e.len > start)
            .map(|(&s, _)| s)
            .unwrap_or(start)
    }

    /// Removes the data in `start..end`, splitting the extents across its bounds.
    fn punch(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let first = self.first_overlapping(start);
        let hit: Vec<u64> = self
            .extents
            .map
            .range(first..end)
            .map(|(&s, _)| s)
            .collect();
        if hit.is_empty() {
            return;
        }
        let map = self.map_mut();
        for s in hit {
            let e = map.remove(&s).expect("listed");
            let e_end = s + e.len;
            if s < start {
                map.insert(s, e.window(0, start - s));
            }
            if e_end > end {
                map.insert(end, e.window(end - s, e_end - end));
            }
        }
    }

    /// Writes `data` at `offset`, extending the length if it ends past it. The caller keeps
    /// `offset + len` within `u64` (a real file's within `i64`): past it the data is cut.
    pub fn write(&mut self, offset: u64, data: &Content) {
        let len = match data {
            Content::Bytes(b) => b.len() as u64,
            Content::Random { len, .. } => *len,
        };
        let len = len.min(u64::MAX - offset);
        if len == 0 {
            return;
        }
        let end = offset + len;
        self.punch(offset, end);
        let src = match data {
            Content::Bytes(b) => Source::Bytes {
                buf: Arc::from(&b[..len as usize]),
                start: 0,
            },
            Content::Random { seed, .. } => Source::Random {
                seed: *seed,
                pos: 0,
            },
        };
        self.map_mut().insert(offset, Extent { len, src });
        if end > self.len {
            self.len = end;
        }
    }

    /// Sets the length: shrinking drops the data past it, growing leaves a hole.
    pub fn truncate(&mut self, len: u64) {
        if len < self.len {
            self.punch(len, self.len);
        }
        if len != self.len {
            self.map_mut();
        }
        self.len = len;
    }

    /// Fills `out` with bytes `offset..offset + out.len()` (zeros in holes and past the end).
    pub fn fill(&self, offset: u64, out: &mut [u8]) {
        out.fill(0);
        let end = offset.saturating_add(out.len() as u64);
        for (s, e) in self.extents_in(offset, end) {
            let from = s.max(offset);
            let to = (s + e.len).min(end);
            e.copy_to(
                from - s,
                &mut out[(from - offset) as usize..(to - offset) as usize],
            );
        }
    }

    /// The extents that overlap `start..end`.
    fn extents_in(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, &Extent)> {
        let first = self.first_overlapping(start);
        self.extents
            .map
            .range(first..end.max(first))
            .map(|(&s, e)| (s, e))
    }

    /// `pread`: up to `len` bytes from `offset`, as many as the file holds there. The caller
    /// bounds `len` (this allocates what it returns).
    pub fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let start = offset.min(self.len);
        let end = start.saturating_add(len).min(self.len);
        let mut out = vec![0; (end - start) as usize];
        self.fill(start, &mut out);
        out
    }

    /// The runs of data, as `(start, end)`, in order (adjacent extents are not merged);
    /// zeros held as data are left out, as holes are.
    pub fn data_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.extents
            .map
            .iter()
            .filter(|(_, e)| !matches!(e.src, Source::Zeros))
            .map(|(&s, e)| (s, s + e.len))
    }

    /// The pages of `page` bytes a reflinked copy of `base` owns once it is `self`: those
    /// holding data that is not `base`'s from the same source at the same place (xfs copies
    /// a shared block on write), and `base`'s last partial page, which the copy-up copied
    /// rather than cloned (`vfs_copy_file_range` clones whole blocks and copies the tail:
    /// measured on 6.18, a 4-byte file's copy owns its block, a 100,000-byte file's copy
    /// shares 24 blocks and owns the 25th). Bytes rewritten from the same source as
    /// `base`'s count as shared (the model cannot tell such a rewrite from the clone).
    pub fn pages_not_shared_with(&self, base: &FileData, page: u64) -> u64 {
        let tail = (!base.len.is_multiple_of(page) && self.len > base.len / page * page)
            .then(|| base.len / page)
            .filter(|&t| self.pages_in(t, t + 1, page) > 0);
        if self.shares(base) {
            return u64::from(tail.is_some());
        }
        let mut pages: Vec<(u64, u64)> = Vec::new();
        let mut mark = |a: u64, b: u64| {
            let (pa, pb) = (a / page, b.div_ceil(page));
            match pages.last_mut() {
                Some(last) if last.1 >= pa => last.1 = last.1.max(pb),
                _ => pages.push((pa, pb)),
            }
        };
        for (s, e) in self.extents_in(0, self.len) {
            let end = (s + e.len).min(self.len);
            let mut at = s;
            for (bs, be) in base.extents_in(s, end) {
                let (a, b) = (bs.max(s), (bs + be.len).min(end));
                if a >= b {
                    continue;
                }
                if a > at {
                    mark(at, a);
                }
                if !same_source(&e.window(a - s, 0).src, &be.window(a - bs, 0).src) {
                    mark(a, b);
                }
                at = at.max(b);
            }
            if at < end {
                mark(at, end);
            }
        }
        let written: u64 = pages.iter().map(|(a, b)| b - a).sum();
        let tail_written = tail.is_some_and(|t| pages.iter().any(|&(a, b)| a <= t && t < b));
        written + u64::from(tail.is_some() && !tail_written)
    }

    /// The pages of `page` bytes that hold data (zeros held as data included): what a
    /// filesystem that allocates by page (tmpfs) has allocated for the file.
    pub fn pages(&self, page: u64) -> u64 {
        self.pages_in(0, self.len.div_ceil(page), page)
    }

    /// The lengths, in pages, of the runs of adjacent pages that hold data, in order: the
    /// pieces a filesystem that allocates each run in one place maps in extents.
    pub fn page_run_lengths(&self, page: u64) -> Vec<u64> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (a, b) in self.page_runs(0, self.len.div_ceil(page), page) {
            match runs.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => runs.push((a, b)),
            }
        }
        runs.into_iter().map(|(a, b)| b - a).collect()
    }

    /// How many of pages `first..past` (page numbers) hold data.
    fn pages_in(&self, first: u64, past: u64, page: u64) -> u64 {
        self.page_runs(first, past, page).map(|(a, b)| b - a).sum()
    }

    /// The runs of pages within `first..past` that hold data, as page numbers, in order
    /// and not overlapping.
    fn page_runs(&self, first: u64, past: u64, page: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let (lo, hi) = (first.saturating_mul(page), past.saturating_mul(page));
        let mut last = first;
        self.extents_in(lo, hi).filter_map(move |(s, e)| {
            let a = (s.max(lo) / page).max(last);
            let b = (s + e.len).min(hi).div_ceil(page);
            (b > a).then(|| {
                last = b;
                (a, b)
            })
        })
    }

    /// Where a write of `start..end` stops when the filesystem has only `free` pages left
    /// to give: `end` when the pages it lacks there number `free` or fewer, else the start
    /// of the first page it cannot get (never before `start`). Pages are taken in order,
    /// as `generic_perform_write` takes them.
    pub fn write_stop(&self, start: u64, end: u64, free: u64, page: u64) -> u64 {
        if start >= end {
            return end;
        }
        let (first, past) = (start / page, end.div_ceil(page));
        if past - first - self.pages_in(first, past, page) <= free {
            return end;
        }
        // Walk the absent pages in order: the gaps between the data's pages.
        let mut left = free;
        let mut at = first;
        for (a, b) in self.page_runs(first, past, page) {
            if a - at > left {
                break;
            }
            left -= a - at;
            at = b;
        }
        ((at + left) * page).max(start).min(end)
    }

    /// Fills every hole with zeros held as data: a file every page of which was written,
    /// as a copy-up writes it. Unchanged (still shared) when there is no hole.
    pub fn fill_holes(&mut self) {
        let mut holes = Vec::new();
        let mut at = 0;
        for (&s, e) in &self.extents.map {
            if s > at {
                holes.push((at, s));
            }
            at = s + e.len;
        }
        if at < self.len {
            holes.push((at, self.len));
        }
        if holes.is_empty() {
            return;
        }
        let map = self.map_mut();
        for (s, e) in holes {
            map.insert(
                s,
                Extent {
                    len: e - s,
                    src: Source::Zeros,
                },
            );
        }
    }

    /// `truncate` as a filesystem that allocates by page does it: shrinking to the middle
    /// of a page that held data keeps the page (its tail zeroed, `shmem_undo_range` /
    /// `truncate_inode_partial_folio`), so it stays allocated.
    pub fn truncate_keeping_page(&mut self, len: u64, page: u64) {
        let start = len - len % page;
        let kept = len < self.len
            && !len.is_multiple_of(page)
            && self.pages_in(len / page, len / page + 1, page) > 0;
        self.truncate(len);
        if kept && self.pages_in(len / page, len / page + 1, page) == 0 {
            self.map_mut().insert(
                start,
                Extent {
                    len: len - start,
                    src: Source::Zeros,
                },
            );
        }
    }

    /// Feeds bytes `start..end` to `f` as `(offset, bytes)` pieces of at most 64 KiB, holes
    /// left out.
    pub fn stream(&self, start: u64, end: u64, mut f: impl FnMut(u64, &[u8])) {
        let end = end.min(self.len);
        let mut buf = Vec::new();
        for (s, e) in self.extents_in(start, end) {
            if matches!(e.src, Source::Zeros) {
                continue;
            }
            let mut at = s.max(start);
            let to = (s + e.len).min(end);
            while at < to {
                let n = (to - at).min(CHUNK);
                buf.resize(n as usize, 0);
                e.copy_to(at - s, &mut buf);
                f(at, &buf);
                at += n;
            }
        }
    }

    /// A hasher fed bytes `start..start + len` (clamped to the contents), offsets from
    /// `start`: the digest of what a `pread` there returns.
    pub fn hasher(&self, start: u64, len: u64) -> ContentHasher {
        let start = start.min(self.len);
        let end = start.saturating_add(len).min(self.len);
        let mut h = ContentHasher::new(end - start);
        self.stream(start, end, |at, bytes| h.update(at - start, bytes));
        h
    }

    /// Byte ranges where `self` and `other` may differ: every extent of either that the
    /// other does not hold identically (same place, length and source). Outside them both
    /// hold the same data or the same hole (up to the shorter length).
    pub fn maybe_differ(&self, other: &FileData) -> Vec<(u64, u64)> {
        if Arc::ptr_eq(&self.extents, &other.extents) {
            return Vec::new();
        }
        let unmatched = |a: &FileData, b: &FileData| -> Vec<(u64, u64)> {
            a.extents
                .map
                .iter()
                .filter(|(s, e)| {
                    !matches!(e.src, Source::Zeros)
                        && !b
                            .extents
                            .map
                            .get(s)
                            .is_some_and(|o| o.len == e.len && same_source(&o.src, &e.src))
                })
                .map(|(&s, e)| (s, s + e.len))
                .collect()
        };
        let mut out = unmatched(self, other);
        out.extend(unmatched(other, self));
        out.sort_unstable();
        out
    }

    fn digests(&self) -> &(String, String) {
        self.extents.digests.get_or_init(|| {
            let h = self.hasher(0, self.len);
            (h.clone().digest(), h.text())
        })
    }

    /// The merged view's digest ([`ContentHasher::digest`]); computed once per contents.
    pub fn digest(&self) -> String {
        self.digests().0.clone()
    }

    /// The storage listing's text ([`ContentHasher::text`]); computed once per contents.
    pub fn text(&self) -> String {
        self.digests().1.clone()
    }
}

fn same_source(a: &Source, b: &Source) -> bool {
    match (a, b) {
        (Source::Bytes { buf: x, start: i }, Source::Bytes { buf: y, start: j }) => {
            Arc::ptr_eq(x, y) && i == j
        }
        (Source::Random { seed: x, pos: i }, Source::Random { seed: y, pos: j }) => {
            x == y && i == j
        }
        (Source::Zeros, Source::Zeros) => true,
        _ => false,
    }
}

impl PartialEq for FileData {
    fn eq(&self, other: &FileData) -> bool {
        if self.shares(other) {
            return true;
        }
        if self.len != other.len {
            return false;
        }
        // Only where either side has data can they differ.
        let mut ranges: Vec<(u64, u64)> = self.data_ranges().chain(other.data_ranges()).collect();
        ranges.sort_unstable();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut done = 0;
        for (s, e) in ranges {
            let mut at = s.max(done);
            while at < e {
                let n = (e - at).min(CHUNK) as usize;
                a.resize(n, 0);
                b.resize(n, 0);
                self.fill(at, &mut a);
                other.fill(at, &mut b);
                if a != b {
                    return false;
                }
                at += n as u64;
            }
            done = done.max(e);
        }
        true
    }
}

impl Eq for FileData {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{content_digest, pseudo_random};

    fn dense(d: &FileData) -> Vec<u8> {
        d.read(0, d.len())
    }

    #[test]
    fn writes_and_truncates_read_as_a_byte_vector_would() {
        let mut d = FileData::from_bytes(b"hello world".to_vec());
        let mut v = b"hello world".to_vec();
        d.write(6, &Content::Bytes(b"WOR".to_vec()));
        v[6..9].copy_from_slice(b"WOR");
        d.write(20, &Content::Bytes(b"!".to_vec()));
        v.resize(20, 0);
        v.push(b'!');
        assert_eq!(dense(&d), v);
        d.write(2, &Content::Random { len: 10, seed: 3 });
        v[2..12].copy_from_slice(&pseudo_random(3, 10));
        assert_eq!(dense(&d), v);
        d.truncate(5);
        v.truncate(5);
        d.truncate(9);
        v.resize(9, 0);
        assert_eq!(dense(&d), v);
        assert_eq!(d.read(3, 100), v[3..].to_vec());
        assert_eq!(d.read(100, 5), Vec::<u8>::new());
        assert_eq!(d.digest(), content_digest(&v));
        assert_eq!(d.text(), format!("fnv:{}", content_digest(&v)));
    }

    #[test]
    fn far_writes_cost_nothing_for_the_hole() {
        let mut d = FileData::new();
        d.write(1 << 62, &Content::Bytes(b"x".to_vec()));
        assert_eq!(d.len(), (1 << 62) + 1);
        assert_eq!(d.read((1 << 62) - 1, 4), vec![0, b'x']);
        d.write(u64::MAX - 1, &Content::Bytes(b"abc".to_vec()));
        assert_eq!(d.len(), u64::MAX);
        assert!(d.text().starts_with("sparse:"));
        let big = FileData::from_content(&Content::Random {
            len: 10 << 30,
            seed: 1,
        });
        let mut tail = [0; 2];
        crate::digest::pseudo_random_at(1, (10 << 30) - 2, &mut tail);
        assert_eq!(big.read((10 << 30) - 2, 10), tail);
    }

    #[test]
    fn equality_is_by_contents() {
        let mut a = FileData::from_bytes(vec![0, 0, 1]);
        let mut b = FileData::new();
        b.truncate(2);
        b.write(2, &Content::Bytes(vec![1]));
        assert_eq!(a, b);
        a.write(0, &Content::Bytes(vec![0]));
        assert_eq!(a, b);
        b.write(0, &Content::Bytes(vec![9]));
        assert_ne!(a, b);
        let c = a.clone();
        assert!(c.shares(&a));
        a.truncate(3);
        assert!(c.shares(&a));
        a.truncate(4);
        assert!(!c.shares(&a));
    }

    /// tmpfs's page accounting as measured (6.18, `size=64k`, `statvfs` after each call):
    /// a byte written in a hole costs its page, rewriting a held page costs nothing, a
    /// write that runs out stops at the first page it cannot get.
    #[test]
    fn pages_are_counted_as_tmpfs_allocates_them() {
        const P: u64 = 4096;
        let mut d = FileData::new();
        assert_eq!(d.pages(P), 0);
        d.write(100, &Content::Bytes(vec![1; 10]));
        d.write(2 * P, &Content::Bytes(vec![1]));
        assert_eq!(d.pages(P), 2);
        d.truncate(10 * P);
        assert_eq!(d.pages(P), 2, "a hole costs nothing");
        // 8 pages asked, 5 free: 20480 bytes land (measured).
        assert_eq!(FileData::new().write_stop(0, 8 * P, 5, P), 5 * P);
        // Pages 0 and 2 are held: pages 1, 3, 4, 5, 6 are taken, page 7 is not.
        assert_eq!(d.write_stop(0, 8 * P, 5, P), 7 * P);
        // Data elsewhere in the write's first page: that page is held.
        assert_eq!(d.write_stop(200, 300, 0, P), 300);
        assert_eq!(d.write_stop(P + 5, P + 9, 0, P), P + 5);
        assert_eq!(d.write_stop(0, 8 * P, 100, P), 8 * P);
        let mut full = d.clone();
        full.fill_holes();
        assert_eq!(full.pages(P), 10);
        assert_eq!(full, d, "zeros held as data read as the hole did");
        assert_eq!(full.text(), d.text());
        // Cut in the middle of a page with data past the cut: the page stays.
        let mut t = FileData::new();
        t.write(P + 200, &Content::Bytes(vec![7; 100]));
        t.truncate_keeping_page(P + 100, P);
        assert_eq!((t.len(), t.pages(P)), (P + 100, 1));
        t.truncate_keeping_page(P, P);
        assert_eq!(t.pages(P), 0);
    }

    #[test]
    fn a_written_clone_owns_the_pages_written_and_shares_the_rest() {
        // 10 pages and 100 bytes: the 11th page is the copy's own from the start.
        let base = FileData::from_content(&Content::Random {
            len: 41060,
            seed: 7,
        });
        let mut c = base.clone();
        assert_eq!(c.pages_not_shared_with(&base, 4096), 1);
        c.write(5000, &Content::Bytes(b"x".to_vec()));
        assert_eq!(c.pages_not_shared_with(&base, 4096), 2);
        // Pages 1 and 2.
        c.write(8190, &Content::Bytes(b"yyyy".to_vec()));
        assert_eq!(c.pages_not_shared_with(&base, 4096), 3);
        // The tail page, owned already.
        c.write(40960, &Content::Bytes(b"z".to_vec()));
        assert_eq!(c.pages_not_shared_with(&base, 4096), 3);
        // A hole left past the end costs nothing.
        c.write(1 << 20, &Content::Bytes(b"z".to_vec()));
        assert_eq!(c.pages_not_shared_with(&base, 4096), 4);
        // Cut short: what is gone costs nothing.
        c.truncate(4096);
        assert_eq!(c.pages_not_shared_with(&base, 4096), 0);
        // A 4096-byte multiple shares every block.
        let whole = FileData::from_content(&Content::Random { len: 8192, seed: 7 });
        assert_eq!(whole.clone().pages_not_shared_with(&whole, 4096), 0);
    }
}
