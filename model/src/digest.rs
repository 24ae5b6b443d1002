//! Deterministic helpers: content digests, pseudo-random file bodies, overlay2 short names.

/// The FNV-1a prime.
const FNV_PRIME: u64 = 0x100_0000_01b3;

/// 64-bit FNV-1a of `bytes`, seeded.
pub fn fnv64(seed: u64, bytes: &[u8]) -> u64 {
    fnv_update(
        0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(FNV_PRIME),
        bytes,
    )
}

fn fnv_update(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// FNV-1a state `h` after `n` zero bytes: a zero byte leaves the xor alone, so this is one
/// multiplication by the prime's `n`-th power (mod 2^64), in O(log n).
fn fnv_zeros(h: u64, mut n: u64) -> u64 {
    let (mut acc, mut base) = (1u64, FNV_PRIME);
    while n > 0 {
        if n & 1 == 1 {
            acc = acc.wrapping_mul(base);
        }
        base = base.wrapping_mul(base);
        n >>= 1;
    }
    h.wrapping_mul(acc)
}

/// The digest the observations show for file contents: 16 hex digits of FNV-1a.
pub fn content_digest(bytes: &[u8]) -> String {
    format!("{:016x}", fnv64(0, bytes))
}

/// Contents longer than this many bytes are digested page by page, holes left out (see
/// [`ContentHasher`]); up to it, every byte counts, as [`content_digest`] does. 64 MiB.
pub const SPARSE_DIGEST_MIN: u64 = 64 << 20;

/// The page of the hole-aware digest: 4 KiB.
pub const DIGEST_PAGE: u64 = 4096;

/// The digest of file contents, streamed: the one both the model and a real driver use, so
/// that a file's text does not depend on how it was stored or read.
///
/// Made with the contents' length; fed `(offset, bytes)` pieces in increasing offset order,
/// not overlapping; whatever no piece covers reads as zeros (a hole), and bytes past the
/// length are ignored. Two forms, by length:
/// - up to [`SPARSE_DIGEST_MIN`] bytes: exactly [`content_digest`] of all the bytes, holes as
///   zeros (a hole costs O(log n), see `fnv_zeros`); [`ContentHasher::text`] is
///   `text:<contents>` for up to 64 printable bytes, else `fnv:<16 hex digits>`;
/// - longer: `sparse:<len>:<16 hex digits>`, FNV-1a over the pages of [`DIGEST_PAGE`]
///   bytes that hold a non-zero byte, each as its index (8 bytes, little-endian) and its
///   bytes (the last page only up to the length); all-zero pages count for nothing,
///   whether holes or written zeros, so the cost is proportional to the data and the hole
///   layout of a real filesystem does not matter.
#[derive(Clone, Debug)]
pub struct ContentHasher {
    len: u64,
    /// Bytes accounted for so far.
    pos: u64,
    h: u64,
    sparse: bool,
    /// The contents, for the `text:` form (lengths up to 64 only).
    head: Vec<u8>,
    /// Sparse form: the page being filled, its index, whether it holds a non-zero byte.
    page: Vec<u8>,
    page_index: Option<u64>,
    page_nonzero: bool,
}

impl ContentHasher {
    /// A hasher for contents of `len` bytes.
    pub fn new(len: u64) -> ContentHasher {
        let sparse = len > SPARSE_DIGEST_MIN;
        ContentHasher {
            len,
            pos: 0,
            h: fnv64(0, b""),
            sparse,
            head: if len <= 64 {
                vec![0; len as usize]
            } else {
                Vec::new()
            },
            page: if sparse {
                vec![0; DIGEST_PAGE as usize]
            } else {
                Vec::new()
            },
            page_index: None,
            page_nonzero: false,
        }
    }

    /// The hasher of `bytes`, all fed.
    pub fn of(bytes: &[u8]) -> ContentHasher {
        let mut h = ContentHasher::new(bytes.len() as u64);
        h.update(0, bytes);
        h
    }

    /// Feeds `bytes` found at `offset`; the range between the previous piece and `offset`
    /// is a hole. A piece before the previous one's end is ignored where it overlaps.
    pub fn update(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset.saturating_add(bytes.len() as u64).min(self.len);
        let start = offset.max(self.pos);
        if start >= end {
            return;
        }
        let bytes = &bytes[(start - offset) as usize..(end - offset) as usize];
        if self.sparse {
            self.update_sparse(start, bytes);
        } else {
            self.h = fnv_zeros(self.h, start - self.pos);
            self.h = fnv_update(self.h, bytes);
            if !self.head.is_empty() {
                self.head[start as usize..end as usize].copy_from_slice(bytes);
            }
        }
        self.pos = end;
    }

    fn update_sparse(&mut self, mut at: u64, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let index = at / DIGEST_PAGE;
            if self.page_index != Some(index) {
                self.flush_page();
                self.page_index = Some(index);
            }
            let within = (at % DIGEST_PAGE) as usize;
            let take = bytes.len().min(DIGEST_PAGE as usize - within);
            let (piece, rest) = bytes.split_at(take);
            if piece.iter().any(|&b| b != 0) {
                self.page[within..within + take].copy_from_slice(piece);
                self.page_nonzero = true;
            }
            at += take as u64;
            bytes = rest;
        }
    }

    fn flush_page(&mut self) {
        if let Some(index) = self.page_index.take() {
            if self.page_nonzero {
                let n = (self.len - index * DIGEST_PAGE).min(DIGEST_PAGE) as usize;
                self.h = fnv_update(self.h, &index.to_le_bytes());
                self.h = fnv_update(self.h, &self.page[..n]);
                self.page.fill(0);
                self.page_nonzero = false;
            }
        }
    }

    fn finish(&mut self) -> u64 {
        if self.sparse {
            self.flush_page();
        } else {
            self.h = fnv_zeros(self.h, self.len - self.pos);
        }
        self.pos = self.len;
        self.h
    }

    /// The merged-view digest: [`content_digest`]'s 16 hex digits, or the sparse form.
    pub fn digest(mut self) -> String {
        let h = self.finish();
        if self.sparse {
            format!("sparse:{}:{h:016x}", self.len)
        } else {
            format!("{h:016x}")
        }
    }

    /// The storage listing's text: `text:`, `fnv:` or the sparse form (see the type).
    pub fn text(mut self) -> String {
        let h = self.finish();
        if self.sparse {
            format!("sparse:{}:{h:016x}", self.len)
        } else if self.len <= 64
            && self
                .head
                .iter()
                .all(|b| (0x20..0x7f).contains(b) || *b == b'\n')
        {
            format!("text:{}", String::from_utf8_lossy(&self.head))
        } else {
            format!("fnv:{h:016x}")
        }
    }
}

/// The splitmix64 increment.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Word `k` (0-based) of the splitmix64 stream of `seed`: the generator is counter-based, so
/// any word is computed directly.
fn splitmix_word(seed: u64, k: u64) -> u64 {
    let mut z = seed.wrapping_add(k.wrapping_add(1).wrapping_mul(GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `out` with bytes `pos..pos + out.len()` of the pseudo-random stream of `seed` (the
/// stream [`pseudo_random`] starts), in time proportional to `out.len()` wherever `pos` is.
pub fn pseudo_random_at(seed: u64, pos: u64, out: &mut [u8]) {
    let mut i = 0;
    let mut p = pos;
    while i < out.len() {
        let word = splitmix_word(seed, p / 8).to_le_bytes();
        let from = (p % 8) as usize;
        let take = (8 - from).min(out.len() - i);
        out[i..i + take].copy_from_slice(&word[from..from + take]);
        i += take;
        p = p.wrapping_add(take as u64);
    }
}

/// `len` pseudo-random bytes from `seed` (splitmix64): the same on every machine, so the
/// model and a real layer built from the same entry hold the same bytes.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    pseudo_random_at(seed, 0, &mut out);
    out
}

/// The seed a `size = N` entry or step uses: derived from the path, so a file's bytes do not
/// depend on what else the scenario holds.
pub fn seed_for_path(path: &str) -> u64 {
    fnv64(0x6c61_7965_7273_7065, path.as_bytes())
}

/// The overlay2 short name of a layer: 26 characters of base32 (A-Z, 2-7), like Docker's
/// random ones, but derived from the layer id so the model and the real side agree.
pub fn short_name(layer_id: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let a = fnv64(1, layer_id.as_bytes());
    let b = fnv64(2, layer_id.as_bytes());
    let mut bits = (u128::from(a) << 64) | u128::from(b);
    let mut s = String::with_capacity(26);
    for _ in 0..26 {
        s.push(ALPHABET[(bits & 31) as usize] as char);
        bits >>= 5;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_26_base32_chars_and_stable() {
        let a = short_name("base");
        assert_eq!(a.len(), 26);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)));
        assert_eq!(a, short_name("base"));
        assert_ne!(a, short_name("app"));
    }

    #[test]
    fn pseudo_random_is_prefix_stable() {
        let long = pseudo_random(7, 100);
        assert_eq!(&long[..13], &pseudo_random(7, 13)[..]);
        assert_ne!(pseudo_random(7, 16), pseudo_random(8, 16));
    }

    /// The stream as the sequential generator made it before it became random-access.
    fn sequential(seed: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut state = seed;
        while out.len() < len {
            state = state.wrapping_add(GAMMA);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let take = (len - out.len()).min(8);
            out.extend_from_slice(&z.to_le_bytes()[..take]);
        }
        out
    }

    #[test]
    fn pseudo_random_is_random_access_and_unchanged() {
        let all = sequential(42, 1000);
        assert_eq!(pseudo_random(42, 1000), all);
        for (pos, len) in [(0, 1), (3, 17), (8, 8), (13, 500), (999, 1)] {
            let mut out = vec![0; len];
            pseudo_random_at(42, pos as u64, &mut out);
            assert_eq!(out, all[pos..pos + len]);
        }
        let mut far = [0u8; 3];
        pseudo_random_at(1, u64::MAX - 1, &mut far); // wraps, no panic
    }

    #[test]
    fn hasher_matches_content_digest_and_holes_are_zeros() {
        let data = pseudo_random(5, 10_000);
        assert_eq!(ContentHasher::of(&data).digest(), content_digest(&data));
        let mut h = ContentHasher::new(10_000);
        h.update(0, &data[..100]);
        h.update(100, &data[100..5000]);
        h.update(5000, &data[5000..]);
        assert_eq!(h.digest(), content_digest(&data));
        let mut holey = vec![0u8; 9000];
        holey[4000..4100].copy_from_slice(&data[..100]);
        let mut h = ContentHasher::new(9000);
        h.update(4000, &data[..100]);
        assert_eq!(h.text(), format!("fnv:{}", content_digest(&holey)));
        assert_eq!(ContentHasher::of(b"hi\n").text(), "text:hi\n");
        assert_eq!(
            ContentHasher::new(3).text(),
            format!("fnv:{}", content_digest(&[0; 3]))
        );
    }

    #[test]
    fn sparse_form_ignores_zero_pages_however_stored() {
        let len = SPARSE_DIGEST_MIN + 1;
        let mut a = ContentHasher::new(len);
        a.update(8192 + 5, b"abc");
        a.update(len - 1, b"z");
        let mut b = ContentHasher::new(len);
        b.update(0, &[0; 8197]); // written zeros, up to the data and after it
        b.update(8197, b"abc");
        b.update(8200, &[0; 1000]);
        let mut c = b.clone();
        b.update(len - 1, b"z");
        c.update(len - 2, b"zz"); // one more non-zero byte, in the same page
        let text = a.clone().text();
        assert!(text.starts_with(&format!("sparse:{len}:")));
        assert_eq!(b.text(), text);
        assert_ne!(c.text(), text);
        assert_eq!(a.digest(), text);
    }
}
