//! A vector of pages shared copy-on-write between versions of the pool: cloning it copies
//! one pointer per page, and a page that was never written costs nothing. The pool keeps its
//! per-block tables (data block reference counts, metadata node reference counts, the data
//! device's contents) in these, so a pure transition can clone the pool cheaply.

use std::sync::Arc;

const PAGE_BITS: u32 = 12;
const PAGE: usize = 1 << PAGE_BITS;

/// A sparse, copy-on-write vector indexed by `u64`, every element `T::default()` until set.
#[derive(Clone, Debug, Default)]
pub(crate) struct Paged<T> {
    pages: Vec<Option<Arc<Vec<T>>>>,
}

impl<T: Clone + Default + PartialEq> Paged<T> {
    /// An empty vector.
    pub(crate) fn new() -> Self {
        Paged { pages: Vec::new() }
    }

    fn split(i: u64) -> (usize, usize) {
        ((i >> PAGE_BITS) as usize, (i as usize) & (PAGE - 1))
    }

    /// The element at `i` (the default when never set).
    pub(crate) fn get(&self, i: u64) -> T {
        let (p, o) = Self::split(i);
        match self.pages.get(p) {
            Some(Some(page)) => page[o].clone(),
            _ => T::default(),
        }
    }

    /// Sets the element at `i`, copying its page first if another version shares it.
    pub(crate) fn set(&mut self, i: u64, v: T) {
        let (p, o) = Self::split(i);
        if self.pages.len() <= p {
            if v == T::default() {
                return;
            }
            self.pages.resize(p + 1, None);
        }
        let slot = &mut self.pages[p];
        if slot.is_none() {
            if v == T::default() {
                return;
            }
            *slot = Some(Arc::new(vec![T::default(); PAGE]));
        }
        if let Some(page) = slot {
            Arc::make_mut(page)[o] = v;
        }
    }

    /// Calls `f` on every index in `begin..end` whose page exists, in order; indices on
    /// pages never written are skipped (their elements are all default).
    pub(crate) fn scan(&self, begin: u64, end: u64, mut f: impl FnMut(u64, &T) -> bool) -> bool {
        let mut i = begin;
        while i < end {
            let (p, o) = Self::split(i);
            let page_end = ((p as u64) + 1) << PAGE_BITS;
            let stop = end.min(page_end);
            match self.pages.get(p) {
                Some(Some(page)) => {
                    for (k, v) in page[o..o + (stop - i) as usize].iter().enumerate() {
                        if f(i + k as u64, v) {
                            return true;
                        }
                    }
                }
                _ => {
                    let d = T::default();
                    if f(i, &d) {
                        return true;
                    }
                }
            }
            i = stop;
        }
        false
    }

    /// Bytes this vector holds on the heap (pages it owns or shares, counted once here).
    pub(crate) fn heap_bytes(&self) -> usize {
        let page = PAGE * std::mem::size_of::<T>() + std::mem::size_of::<Vec<T>>() + 16;
        self.pages.capacity() * std::mem::size_of::<Option<Arc<Vec<T>>>>()
            + self.pages.iter().flatten().count() * page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_is_default_and_clones_are_independent() {
        let mut a: Paged<u32> = Paged::new();
        assert_eq!(a.get(1 << 40), 0);
        a.set(5, 7);
        a.set(100_000, 9);
        a.set(1 << 30, 0); // a default value allocates nothing
        let b = a.clone();
        a.set(5, 8);
        assert_eq!((a.get(5), b.get(5), b.get(100_000)), (8, 7, 9));
        let mut seen = Vec::new();
        a.scan(0, 200_000, |i, v| {
            if *v != 0 {
                seen.push(i);
            }
            false
        });
        assert_eq!(seen, vec![5, 100_000]);
    }

    #[test]
    fn scan_reports_unwritten_pages_once() {
        let a: Paged<u32> = Paged::new();
        let mut calls = 0;
        a.scan(0, 3 * PAGE as u64, |_, _| {
            calls += 1;
            false
        });
        assert_eq!(calls, 3);
        assert!(a.scan(10, 11, |i, v| i == 10 && *v == 0));
    }
}
