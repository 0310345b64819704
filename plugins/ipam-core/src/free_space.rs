use crate::{OffsetSet, Request};

/// The free offsets of a request: `0 .. size` minus the excluded ranges minus
/// the allocated set, searched without ever listing them one by one.
pub struct FreeSpace<'a> {
    size: u64,
    allocated: &'a OffsetSet,
    /// Excluded ranges clipped to the pool, sorted, merged, inclusive.
    excluded: Vec<(u64, u64)>,
}

impl<'a> FreeSpace<'a> {
    pub fn new(request: &'a Request) -> Result<Self, String> {
        let mut ranges = Vec::with_capacity(request.excluded.len());
        for range in &request.excluded {
            let (first, last) = (*range.start(), *range.end());
            if first > last {
                return Err(format!("excluded range {first}..={last} is reversed"));
            }
            if first < request.size {
                ranges.push((first, last.min(request.size - 1)));
            }
        }
        ranges.sort_unstable();
        let mut excluded: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (first, last) in ranges {
            match excluded.last_mut() {
                Some(previous) if first <= previous.1.saturating_add(1) => {
                    previous.1 = previous.1.max(last)
                }
                _ => excluded.push((first, last)),
            }
        }
        Ok(FreeSpace {
            size: request.size,
            allocated: &request.allocated,
            excluded,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_excluded(&self, offset: u64) -> bool {
        self.excluded_range_at(offset).is_some()
    }

    /// How many offsets are neither excluded nor allocated.
    pub fn free_count(&self) -> u64 {
        self.gaps()
            .map(|(first, last)| self.gap_free(first, last))
            .sum()
    }

    /// The lowest free offset at or after `from`.
    pub fn next_free(&self, mut from: u64) -> Option<u64> {
        while from < self.size {
            if let Some(end) = self.excluded_range_at(from) {
                from = end.checked_add(1)?;
                continue;
            }
            // Inverting the word turns "first free bit at or after from" into a
            // trailing-zeros count.
            let free_bits = !self.allocated.word(from / 64) & (u64::MAX << (from % 64));
            if free_bits == 0 {
                from = (from / 64 + 1).checked_mul(64)?;
                continue;
            }
            let candidate = (from / 64) * 64 + u64::from(free_bits.trailing_zeros());
            if candidate >= self.size {
                return None;
            }
            if self.is_excluded(candidate) {
                from = candidate;
                continue;
            }
            return Some(candidate);
        }
        None
    }

    /// The free offset of rank `n` (0-based) in ascending order.
    pub fn nth_free(&self, mut n: u64) -> Option<u64> {
        for (first, last) in self.gaps() {
            let free = self.gap_free(first, last);
            if n >= free {
                n -= free;
                continue;
            }
            // Between allocated words every offset is free, so jump across
            // those stretches; count an allocated word's free bits at once and
            // look inside only the word that holds the answer.
            let mut position = first;
            for (index, bits) in self.allocated.words_in(first / 64, last / 64) {
                let word_first = (index * 64).max(first);
                let word_last = (index * 64 + 63).min(last);
                let stretch = word_first - position;
                if n < stretch {
                    return Some(position + n);
                }
                n -= stretch;
                let in_gap = (u64::MAX << (word_first % 64)) & (u64::MAX >> (63 - word_last % 64));
                let mut free_bits = !bits & in_gap;
                let free = u64::from(free_bits.count_ones());
                if n < free {
                    for _ in 0..n {
                        free_bits &= free_bits - 1; // drop the lowest free bit
                    }
                    return Some(index * 64 + u64::from(free_bits.trailing_zeros()));
                }
                n -= free;
                position = word_last + 1;
            }
            return Some(position + n);
        }
        None
    }

    fn gap_free(&self, first: u64, last: u64) -> u64 {
        (last - first + 1) - self.allocated.count_in(first, last)
    }

    /// The end of the excluded range that holds `offset`, if one does.
    fn excluded_range_at(&self, offset: u64) -> Option<u64> {
        let index = self.excluded.partition_point(|&(first, _)| first <= offset);
        let (_, last) = *self.excluded.get(index.checked_sub(1)?)?;
        (offset <= last).then_some(last)
    }

    /// The inclusive ranges between exclusions.
    fn gaps(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut next_start = Some(0u64);
        let mut ranges = self.excluded.iter();
        std::iter::from_fn(move || {
            loop {
                let start = next_start?;
                if start >= self.size {
                    return None;
                }
                match ranges.next() {
                    Some(&(first, last)) => {
                        next_start = last.checked_add(1);
                        if first > start {
                            return Some((start, first - 1));
                        }
                    }
                    None => {
                        next_start = None;
                        return Some((start, self.size - 1));
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn request(size: u64, allocated: &[u64], excluded: &[(u64, u64)]) -> Request {
        Request {
            size,
            allocated: allocated.iter().copied().collect(),
            excluded: excluded.iter().map(|&(a, b)| a..=b).collect(),
            ..Request::default()
        }
    }

    /// The slow, obvious answer the fast paths are checked against.
    fn free_by_brute_force(request: &Request) -> Vec<u64> {
        (0..request.size)
            .filter(|o| !request.allocated.contains(*o))
            .filter(|o| !request.excluded.iter().any(|r| r.contains(o)))
            .collect()
    }

    #[rstest]
    #[case::ends_excluded(request(256, &[], &[(0, 0), (255, 255)]))]
    #[case::overlapping_exclusions_across_words(request(
        256,
        &[1, 2, 3, 64, 65, 200],
        &[(0, 0), (10, 70), (60, 80)]
    ))]
    #[case::two_full_words_and_a_short_one(request(130, &(0..128).collect::<Vec<_>>(), &[]))]
    #[case::exclusion_past_the_end(request(10, &[], &[(0, 100)]))]
    #[case::empty_pool(request(0, &[], &[]))]
    #[case::unsorted_exclusions(request(300, &[5, 299], &[(299, 400), (0, 3)]))]
    #[case::mostly_full_words_cut_mid_word(request(
        1000,
        &(0..1000).filter(|o| o * 7919 % 13 < 9).collect::<Vec<_>>(),
        &[(0, 0), (130, 190), (999, 999)],
    ))]
    fn agrees_with_brute_force(#[case] case: Request) {
        let space = FreeSpace::new(&case).unwrap();
        let expected = free_by_brute_force(&case);
        assert_eq!(space.free_count(), expected.len() as u64, "{case:?}");
        for (rank, offset) in expected.iter().enumerate() {
            assert_eq!(space.nth_free(rank as u64), Some(*offset), "{case:?}");
        }
        assert_eq!(space.nth_free(expected.len() as u64), None);
        for from in 0..case.size + 2 {
            let want = expected.iter().copied().find(|o| *o >= from);
            assert_eq!(space.next_free(from), want, "from {from} in {case:?}");
        }
    }

    #[test]
    fn huge_sparse_pool() {
        let size = u64::MAX;
        let case = request(size, &[0, 1, u64::MAX - 2], &[(2, 1 << 40)]);
        let space = FreeSpace::new(&case).unwrap();
        assert_eq!(space.next_free(0), Some((1 << 40) + 1));
        assert_eq!(space.next_free(u64::MAX - 2), Some(u64::MAX - 1));
        assert_eq!(space.free_count(), size - 3 - (1 << 40) + 1);
        assert_eq!(space.nth_free(0), Some((1 << 40) + 1));
    }

    #[test]
    fn reversed_range_is_an_error() {
        assert!(FreeSpace::new(&request(10, &[], &[(5, 4)])).is_err());
    }
}
