//! A fixed-size bitmap of atomic words.

use std::sync::atomic::{AtomicU64, Ordering};

/// One bit per item (a guest page), shareable between threads.
pub struct AtomicBitmap {
    words: Box<[AtomicU64]>,
    bits: usize,
}

impl AtomicBitmap {
    /// A bitmap of `bits` cleared bits.
    pub fn new(bits: usize) -> Self {
        let words = (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        AtomicBitmap { words, bits }
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.bits
    }

    /// True when the bitmap has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// Sets bit `i`; returns whether it was already set.
    #[inline]
    pub fn set(&self, i: usize) -> bool {
        let mask = 1u64 << (i % 64);
        // A plain load first: most calls find the bit already set and skip
        // the locked read-modify-write.
        let w = &self.words[i / 64];
        if w.load(Ordering::Relaxed) & mask != 0 {
            return true;
        }
        w.fetch_or(mask, Ordering::AcqRel) & mask != 0
    }

    /// Clears bit `i`; returns whether it was set.
    #[inline]
    pub fn clear(&self, i: usize) -> bool {
        let mask = 1u64 << (i % 64);
        let w = &self.words[i / 64];
        if w.load(Ordering::Relaxed) & mask == 0 {
            return false;
        }
        w.fetch_and(!mask, Ordering::AcqRel) & mask != 0
    }

    /// Reads bit `i`.
    #[inline]
    pub fn get(&self, i: usize) -> bool {
        self.words[i / 64].load(Ordering::Acquire) & (1u64 << (i % 64)) != 0
    }

    /// Sets bits `start..end`.
    pub fn set_range(&self, start: usize, end: usize) {
        for i in start..end.min(self.bits) {
            self.set(i);
        }
    }

    /// Clears bits `start..end`.
    pub fn clear_range(&self, start: usize, end: usize) {
        for i in start..end.min(self.bits) {
            self.clear(i);
        }
    }

    /// Sets every bit.
    pub fn fill(&self) {
        for (n, w) in self.words.iter().enumerate() {
            let valid = (self.bits - n * 64).min(64);
            let mask = if valid == 64 {
                u64::MAX
            } else {
                (1u64 << valid) - 1
            };
            w.store(mask, Ordering::Release);
        }
    }

    /// Clears every bit.
    pub fn clear_all(&self) {
        for w in self.words.iter() {
            w.store(0, Ordering::Release);
        }
    }

    /// Atomically takes every word and leaves zeros behind (fetch-and-clear).
    pub fn take(&self) -> Vec<u64> {
        self.words
            .iter()
            .map(|w| w.swap(0, Ordering::AcqRel))
            .collect()
    }

    /// A copy of the words as they are now.
    pub fn snapshot(&self) -> Vec<u64> {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .collect()
    }

    /// ORs `words` (as returned by [`take`](Self::take)) back in.
    pub fn merge(&self, words: &[u64]) {
        for (w, v) in self.words.iter().zip(words) {
            if *v != 0 {
                w.fetch_or(*v, Ordering::AcqRel);
            }
        }
    }

    /// Replaces the contents with `words` (extra bits past `len` are ignored).
    pub fn load_from(&self, words: &[u64]) {
        for (n, w) in self.words.iter().enumerate() {
            let v = words.get(n).copied().unwrap_or(0);
            let valid = (self.bits - n * 64).min(64);
            let mask = if valid == 64 {
                u64::MAX
            } else {
                (1u64 << valid) - 1
            };
            w.store(v & mask, Ordering::Release);
        }
    }

    /// Number of set bits.
    pub fn count(&self) -> usize {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
            .sum()
    }

    /// Iterates over the indexes of set bits in a word slice.
    pub fn iter_set(words: &[u64]) -> impl Iterator<Item = usize> + '_ {
        words.iter().enumerate().flat_map(|(n, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(n * 64 + b)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_take() {
        let b = AtomicBitmap::new(130);
        assert!(!b.set(3));
        assert!(b.set(3));
        b.set(129);
        assert_eq!(b.count(), 2);
        let words = b.take();
        assert_eq!(
            AtomicBitmap::iter_set(&words).collect::<Vec<_>>(),
            vec![3, 129]
        );
        assert_eq!(b.count(), 0);
        b.fill();
        assert_eq!(b.count(), 130);
        assert!(b.clear(64));
        assert!(!b.get(64));
        assert_eq!(b.count(), 129);
    }
}
