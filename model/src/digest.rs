//! Deterministic helpers: content digests, pseudo-random file bodies, overlay2 short names.

/// 64-bit FNV-1a of `bytes`, seeded.
pub fn fnv64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x100_0000_01b3);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The digest the observations show for file contents: 16 hex digits of FNV-1a.
pub fn content_digest(bytes: &[u8]) -> String {
    format!("{:016x}", fnv64(0, bytes))
}

/// `len` pseudo-random bytes from `seed` (splitmix64): the same on every machine, so the
/// model and a real layer built from the same entry hold the same bytes.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut state = seed;
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&z.to_le_bytes()[..take]);
    }
    out
}

/// `len` bytes of [`pseudo_random`]`(seed, ..)` starting at byte `offset`, computed
/// directly (splitmix64 is counter-based: word `k` comes from state `seed + (k+1)·γ`), so a
/// window of a huge file costs its own length only.
pub fn pseudo_random_at(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut word = offset / 8;
    let mut skip = (offset % 8) as usize;
    while out.len() < len {
        let state = seed.wrapping_add(word.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let bytes = z.to_le_bytes();
        let take = (len - out.len()).min(8 - skip);
        out.extend_from_slice(&bytes[skip..skip + take]);
        skip = 0;
        word = word.wrapping_add(1);
    }
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
    fn a_window_of_the_stream_is_the_stream_sliced() {
        let all = pseudo_random(7, 100);
        for (off, len) in [(0, 100), (1, 9), (8, 8), (13, 40), (99, 1)] {
            assert_eq!(
                pseudo_random_at(7, off as u64, len),
                all[off..off + len],
                "{off}+{len}"
            );
        }
    }

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
}
