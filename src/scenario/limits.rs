//! What a scenario file may ask for. Scenario files are untrusted input to a root process,
//! so everything that sizes work or memory has a documented bound, and `layerspec check`
//! refuses a file past one with an error located at the value (file:line:col).
//!
//! | what | bound | why |
//! | --- | --- | --- |
//! | the file itself | a regular file of at most [`MAX_FILE_BYTES`] | a FIFO or a device would block or never end |
//! | offsets and sizes (`offset`, `size`, `len`, `truncate`) and `offset + size` of a write | at most [`MAX_OFFSET`] | the largest `off_t` (`i64::MAX`), what `pwrite`/`truncate` take |
//! | layers in the file | at most [`MAX_LAYERS`] | |
//! | a layer's depth, plus the `commit` steps that may stack on it | at most [`MAX_DEPTH`] | Docker's overlay2 refuses a lower list longer than `maxDepth = 128` (moby 20.10 `daemon/graphdriver/overlay2/overlay.go`, `getLower`: "max depth exceeded"), so 128 image layers is the deepest a container runs on; the kernel's own limit (`OVL_MAX_STACK`, 500) lies beyond |
//! | entries in all layers | at most [`MAX_ENTRIES`] | |
//! | steps | at most [`MAX_STEPS`] | |
//! | containers (tables and `create_container` steps) | at most [`MAX_CONTAINERS`] | |
//! | backing `size` | a number with an optional `K`, `M`, `G` or `T` suffix, [`MIN_BACKING`] to [`MAX_BACKING`] (tmpfs: [`MAX_TMPFS`], held in memory) | |
//! | ext4 `inodes` | 16 to one per KiB of `size` | what `mke2fs -N` can lay out |
//!
//! Ids are names ([`layerspec_model::check_id`]) and paths are canonical
//! ([`layerspec_model::validate_scenario_path`]): no `.` or `..` component.

/// Largest scenario file read.
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// Largest offset or file size a step or entry may name: `i64::MAX`.
pub const MAX_OFFSET: u64 = i64::MAX as u64;
/// Most layers a file defines.
pub const MAX_LAYERS: usize = 1000;
/// Deepest layer chain, counting the commits that may stack on it.
pub const MAX_DEPTH: usize = 128;
/// Most entries over all layers.
pub const MAX_ENTRIES: usize = 100_000;
/// Most steps.
pub const MAX_STEPS: usize = 100_000;
/// Most containers.
pub const MAX_CONTAINERS: usize = 1000;
/// Smallest backing filesystem.
pub const MIN_BACKING: u64 = 1 << 20;
/// Largest backing filesystem (ext4, xfs: sparse loop files).
pub const MAX_BACKING: u64 = 1 << 40;
/// Largest tmpfs backing (its pages are memory).
pub const MAX_TMPFS: u64 = 8 << 30;
/// The tmpfs backing's size when the file names none.
pub const DEFAULT_TMPFS: &str = layerspec_real::BackingFs::TMPFS_SIZE;
/// The ext4/xfs backing's size when the file names none.
pub const DEFAULT_LOOP: &str = "256M";

/// `"256M"` as bytes: a decimal number with an optional suffix `K`, `M`, `G` or `T`
/// (powers of 1024), within `[MIN_BACKING, max]`. The error says what is wrong.
pub fn backing_size(s: &str, max: u64) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.trim_end_matches(|c: char| "KkMmGgTt".contains(c));
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || t.len() > digits.len() + 1
    {
        return Err(format!(
            "size `{s}`: expected a number of bytes with an optional K, M, G or T suffix (\"256M\")"
        ));
    }
    let bytes = layerspec_real::parse_size(t)
        .filter(|b| *b <= max)
        .ok_or_else(|| format!("size `{s}` is larger than the limit of {}", human(max)))?;
    if bytes < MIN_BACKING {
        return Err(format!(
            "size `{s}` is smaller than the limit of {}",
            human(MIN_BACKING)
        ));
    }
    Ok(bytes)
}

fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 40 && b % (1 << 40) == 0 => format!("{}T", b >> 40),
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_sizes_are_numbers_within_bounds() {
        assert_eq!(backing_size("256M", MAX_BACKING), Ok(256 << 20));
        assert_eq!(backing_size("1T", MAX_BACKING), Ok(1 << 40));
        assert!(backing_size("abc", MAX_BACKING)
            .unwrap_err()
            .contains("expected a number"));
        assert!(backing_size("-1G", MAX_BACKING).is_err());
        assert!(backing_size("99999999999G", MAX_BACKING)
            .unwrap_err()
            .contains("larger than"));
        assert!(backing_size("18446744073709551615T", MAX_BACKING).is_err());
        assert!(backing_size("16G", MAX_TMPFS).is_err());
        assert!(backing_size("4K", MAX_BACKING)
            .unwrap_err()
            .contains("smaller"));
    }
}
