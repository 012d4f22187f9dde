//! A bounded ring of recent items: when it is full, the oldest goes first.
//! The console keeps events in rings so that a day of activity (or a flood)
//! costs a fixed amount of memory.

use std::collections::VecDeque;

/// At most `cap` items, oldest first; pushing onto a full ring drops the
/// oldest and counts it.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    items: VecDeque<T>,
    cap: usize,
    dropped: u64,
}

impl<T> Ring<T> {
    /// An empty ring holding at most `cap` items (at least one). Memory is
    /// taken as items arrive, not up front.
    pub fn new(cap: usize) -> Ring<T> {
        Ring {
            items: VecDeque::new(),
            cap: cap.max(1),
            dropped: 0,
        }
    }

    /// Adds `item` as the newest; returns the oldest if it had to go.
    pub fn push(&mut self, item: T) -> Option<T> {
        let out = if self.items.len() >= self.cap {
            self.dropped += 1;
            self.items.pop_front()
        } else {
            None
        };
        self.items.push_back(item);
        out
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The most it holds.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Items dropped to make room since it was created.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Oldest first (`.rev()` for newest first).
    pub fn iter(&self) -> std::collections::vec_deque::Iter<'_, T> {
        self.items.iter()
    }

    /// The newest item.
    pub fn newest(&self) -> Option<&T> {
        self.items.back()
    }

    /// The `i`-th newest item (0 is the newest).
    pub fn nth_newest(&self, i: usize) -> Option<&T> {
        self.items.iter().rev().nth(i)
    }
}

impl<'a, T> IntoIterator for &'a Ring<T> {
    type Item = &'a T;
    type IntoIter = std::collections::vec_deque::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_counts_the_dropped() {
        let mut r = Ring::new(3);
        for i in 0..5 {
            r.push(i);
        }
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!((r.len(), r.dropped()), (3, 2));
        assert_eq!(r.newest(), Some(&4));
        assert_eq!(r.nth_newest(2), Some(&2));
        assert_eq!(r.nth_newest(3), None);
        assert_eq!(r.push(5), Some(2));
    }

    #[test]
    fn zero_capacity_means_one() {
        let mut r = Ring::new(0);
        r.push('a');
        r.push('b');
        assert_eq!(r.iter().copied().collect::<String>(), "b");
    }
}
