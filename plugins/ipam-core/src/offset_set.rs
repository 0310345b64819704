/// A set of offsets stored as the non-zero words of a bitmap, sorted by word
/// index: a dense /24 is four words, a sparse IPv6 pool one word per cluster.
/// A sorted vector rather than a map: scans over all words (counting, ranked
/// search) dominate, and inserts are few.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetSet {
    words: Vec<(u64, u64)>,
}

impl OffsetSet {
    /// Builds a set from `(index, bits)` words as they travel over WIT; zero
    /// words are dropped and repeated indexes merged, so any input is safe.
    pub fn from_words(words: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut words: Vec<(u64, u64)> = words.into_iter().filter(|&(_, bits)| bits != 0).collect();
        words.sort_unstable_by_key(|&(index, _)| index);
        words.dedup_by(|next, kept| {
            let same = next.0 == kept.0;
            if same {
                kept.1 |= next.1;
            }
            same
        });
        OffsetSet { words }
    }

    /// The non-zero words in index order.
    pub fn words(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.words.iter().copied()
    }

    /// The non-zero words with index in `first ..= last`.
    pub fn words_in(&self, first: u64, last: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let start = self.words.partition_point(|&(index, _)| index < first);
        self.words[start..]
            .iter()
            .copied()
            .take_while(move |&(index, _)| index <= last)
    }

    /// Adds an offset; false if it was already there.
    pub fn insert(&mut self, offset: u64) -> bool {
        let bit = 1u64 << (offset % 64);
        match self.position(offset / 64) {
            Ok(at) => {
                let word = &mut self.words[at].1;
                let added = *word & bit == 0;
                *word |= bit;
                added
            }
            Err(at) => {
                self.words.insert(at, (offset / 64, bit));
                true
            }
        }
    }

    /// Removes an offset; false if it was not there.
    pub fn remove(&mut self, offset: u64) -> bool {
        let Ok(at) = self.position(offset / 64) else {
            return false;
        };
        let bit = 1u64 << (offset % 64);
        let word = &mut self.words[at].1;
        let removed = *word & bit != 0;
        *word &= !bit;
        if *word == 0 {
            self.words.remove(at);
        }
        removed
    }

    pub fn contains(&self, offset: u64) -> bool {
        self.word(offset / 64) & (1u64 << (offset % 64)) != 0
    }

    /// The word with this index (zero when absent).
    pub fn word(&self, index: u64) -> u64 {
        self.position(index).map_or(0, |at| self.words[at].1)
    }

    pub fn len(&self) -> u64 {
        self.words
            .iter()
            .map(|&(_, bits)| u64::from(bits.count_ones()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Offsets in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().flat_map(|&(index, bits)| {
            (0..64)
                .filter(move |bit| bits & (1u64 << bit) != 0)
                .map(move |bit| index * 64 + bit)
        })
    }

    /// Offsets in `first ..= last`, counted word by word.
    pub fn count_in(&self, first: u64, last: u64) -> u64 {
        if first > last {
            return 0;
        }
        let (first_word, last_word) = (first / 64, last / 64);
        self.words_in(first_word, last_word)
            .map(|(index, bits)| {
                let mut mask = u64::MAX;
                if index == first_word {
                    mask &= u64::MAX << (first % 64);
                }
                if index == last_word {
                    mask &= u64::MAX >> (63 - last % 64);
                }
                u64::from((bits & mask).count_ones())
            })
            .sum()
    }

    fn position(&self, index: u64) -> Result<usize, usize> {
        self.words.binary_search_by_key(&index, |&(index, _)| index)
    }
}

impl FromIterator<u64> for OffsetSet {
    fn from_iter<I: IntoIterator<Item = u64>>(offsets: I) -> Self {
        OffsetSet::from_words(
            offsets
                .into_iter()
                .map(|offset| (offset / 64, 1u64 << (offset % 64))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_contains() {
        let mut set = OffsetSet::default();
        assert!(set.insert(0));
        assert!(set.insert(63));
        assert!(set.insert(64));
        assert!(!set.insert(64));
        assert!(set.insert(u64::MAX));
        assert_eq!(set.len(), 4);
        assert!(set.contains(63) && set.contains(u64::MAX) && !set.contains(1));
        assert!(set.remove(63));
        assert!(!set.remove(63));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 64, u64::MAX]);
    }

    #[test]
    fn from_words_drops_zero_and_merges() {
        let set = OffsetSet::from_words([(9, 1), (1, 0), (2, 0b1), (7, 4), (2, 0b10), (9, 8)]);
        assert_eq!(
            set.words().collect::<Vec<_>>(),
            vec![(2, 0b11), (7, 4), (9, 9)]
        );
    }

    #[test]
    fn count_in_partial_words() {
        let set: OffsetSet = [1, 2, 63, 64, 130].into_iter().collect();
        assert_eq!(set.count_in(0, u64::MAX), 5);
        assert_eq!(set.count_in(2, 64), 3);
        assert_eq!(set.count_in(3, 62), 0);
        assert_eq!(set.count_in(64, 64), 1);
        assert_eq!(set.count_in(65, 129), 0);
        assert_eq!(set.count_in(5, 4), 0);
    }
}
