//! Sets of block (or page) numbers kept as runs, so a file of gigabytes costs the stand-in
//! filesystem a few entries, not one per 4 KiB block.

use std::collections::BTreeMap;

/// A set of `u64`s as disjoint, non-adjacent runs `start -> end` (exclusive).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RunSet(BTreeMap<u64, u64>);

impl RunSet {
    /// The empty set.
    pub(crate) fn new() -> RunSet {
        RunSet::default()
    }

    /// Adds `n` numbers from `start`.
    pub(crate) fn insert_run(&mut self, start: u64, n: u64) {
        if n == 0 {
            return;
        }
        let (mut s, mut e) = (start, start.saturating_add(n));
        // Merge with a run that starts before and reaches `s`.
        if let Some((&ps, &pe)) = self.0.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
            }
        }
        // Swallow every run starting within `s..=e`.
        let inside: Vec<(u64, u64)> = self.0.range(s..=e).map(|(&a, &b)| (a, b)).collect();
        for (a, b) in inside {
            self.0.remove(&a);
            e = e.max(b);
        }
        self.0.insert(s, e);
    }

    /// Adds one number.
    pub(crate) fn insert(&mut self, b: u64) {
        self.insert_run(b, 1);
    }

    /// Adds every number of `other`.
    pub(crate) fn extend(&mut self, other: &RunSet) {
        for (s, n) in other.runs() {
            self.insert_run(s, n);
        }
    }

    /// Whether `b` is in the set.
    #[cfg(test)]
    pub(crate) fn contains(&self, b: u64) -> bool {
        self.0.range(..=b).next_back().is_some_and(|(_, &e)| b < e)
    }

    /// Whether the set is empty.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many numbers the set holds.
    pub(crate) fn count(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    /// The runs as `(first, count)`, in order.
    pub(crate) fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(&s, &e)| (s, e - s))
    }

    /// The numbers in `self` and not in `other`.
    pub(crate) fn minus(&self, other: &RunSet) -> RunSet {
        let mut out = RunSet::new();
        for (s, n) in self.runs() {
            let mut at = s;
            let end = s + n;
            for (&os, &oe) in other.0.range(..end) {
                if oe <= at {
                    continue;
                }
                if os > at {
                    out.insert_run(at, os - at);
                }
                at = at.max(oe);
                if at >= end {
                    break;
                }
            }
            if at < end {
                out.insert_run(at, end - at);
            }
        }
        out
    }

    /// The numbers in both.
    pub(crate) fn intersect(&self, other: &RunSet) -> RunSet {
        self.minus(&self.minus(other))
    }
}

impl<const N: usize> From<[u64; N]> for RunSet {
    fn from(blocks: [u64; N]) -> RunSet {
        let mut r = RunSet::new();
        for b in blocks {
            r.insert(b);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_and_subtract() {
        let mut r = RunSet::from([5, 3, 4, 10]);
        assert_eq!(r.runs().collect::<Vec<_>>(), vec![(3, 3), (10, 1)]);
        r.insert_run(6, 4);
        assert_eq!(r.runs().collect::<Vec<_>>(), vec![(3, 8)]);
        r.insert_run(20, 5);
        assert!(r.contains(3) && r.contains(24) && !r.contains(11) && !r.contains(25));
        assert_eq!(r.count(), 13);
        let cut = RunSet::from([4, 20, 21]);
        let d = r.minus(&cut);
        assert_eq!(d.runs().collect::<Vec<_>>(), vec![(3, 1), (5, 6), (22, 3)]);
        assert_eq!(r.intersect(&cut), cut);
        assert_eq!(cut.minus(&r), RunSet::new());
    }
}
