use crate::{AllocateError, FreeSpace, Request};

/// The built-in ways to choose the next offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// The next free offsets after the cursor, wrapping at the end of the pool
    /// (host-local's `last_reserved_ip` behaviour): an address freed a moment ago
    /// is the last to be handed out again.
    Sequential,
    /// Uniform over the free offsets, from the host's seed so a run replays.
    Random,
    /// The lowest free offsets: fills holes first, keeps the pool compact.
    DensePack,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Sequential => "sequential",
            Strategy::Random => "random",
            Strategy::DensePack => "dense-pack",
        }
    }
}

/// Chooses `request.count` distinct free offsets. None of the built-in
/// strategies takes configuration, so any key is an error rather than being
/// silently ignored.
pub fn allocate(
    strategy: Strategy,
    request: &Request,
    config: &[(String, String)],
) -> Result<Vec<u64>, AllocateError> {
    if let Some((key, _)) = config.first() {
        return Err(AllocateError::InvalidConfig(format!(
            "the {} strategy takes no configuration, got key {key:?}",
            strategy.name()
        )));
    }
    if request.count == 0 {
        return Err(AllocateError::InvalidRequest(
            "count must be at least 1".into(),
        ));
    }
    let space = FreeSpace::new(request).map_err(AllocateError::InvalidRequest)?;
    let free = space.free_count();
    let count = u64::from(request.count);
    if free < count {
        return Err(AllocateError::Exhausted(free));
    }
    let picked = match strategy {
        Strategy::Sequential => {
            let start = request
                .cursor
                .and_then(|cursor| cursor.checked_add(1))
                .filter(|start| *start < space.size())
                .unwrap_or(0);
            walk_forward(&space, start, count)
        }
        Strategy::DensePack => walk_forward(&space, 0, count),
        Strategy::Random => random_ranks(request.seed, free, count)
            .into_iter()
            .filter_map(|rank| space.nth_free(rank))
            .collect(),
    };
    // `free >= count` guarantees enough picks; anything else is a bug here.
    debug_assert_eq!(picked.len() as u64, count);
    Ok(picked)
}

/// `count` free offsets from `start` on, wrapping once to the beginning. Each
/// free offset is met at most once per lap, so the picks are distinct.
fn walk_forward(space: &FreeSpace<'_>, start: u64, count: u64) -> Vec<u64> {
    let mut picked = Vec::with_capacity(count as usize);
    let mut from = start;
    let mut wrapped = start == 0;
    while (picked.len() as u64) < count {
        match space.next_free(from) {
            Some(offset) if !(wrapped && offset >= start && start != 0) => {
                picked.push(offset);
                from = offset + 1;
            }
            _ if !wrapped => {
                wrapped = true;
                from = 0;
            }
            _ => break,
        }
    }
    picked
}

/// `count` distinct ranks uniform in `0 .. free` (Floyd's algorithm: one draw
/// per rank, no retries, however full the pool).
fn random_ranks(seed: u64, free: u64, count: u64) -> Vec<u64> {
    let mut rng = SplitMix64(seed);
    let mut ranks: Vec<u64> = Vec::with_capacity(count as usize);
    for upper in free - count..free {
        let candidate = rng.below(upper + 1);
        ranks.push(if ranks.contains(&candidate) {
            upper
        } else {
            candidate
        });
    }
    ranks
}

/// A small, well-known generator: the same seed gives the same picks on every
/// platform, which is what replay needs.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0 .. bound` without modulo bias (Lemire's method).
    fn below(&mut self, bound: u64) -> u64 {
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let product = u128::from(self.next()) * u128::from(bound);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OffsetSet, check_answer};
    use rstest::rstest;

    /// A /24 as the host lays it out: network (0) and broadcast (255) and the
    /// gateway (1) excluded.
    fn slash24(allocated: &[u64], cursor: Option<u64>, count: u32) -> Request {
        Request {
            size: 256,
            allocated: allocated.iter().copied().collect(),
            excluded: vec![0..=1, 255..=255],
            cursor,
            count,
            seed: 7,
        }
    }

    #[test]
    fn sequential_continues_after_cursor_and_wraps() {
        let request = slash24(&[2, 3, 11], Some(10), 3);
        assert_eq!(
            allocate(Strategy::Sequential, &request, &[]).unwrap(),
            vec![12, 13, 14]
        );
        let request = slash24(&[2], Some(253), 3);
        assert_eq!(
            allocate(Strategy::Sequential, &request, &[]).unwrap(),
            vec![254, 3, 4]
        );
        // A cursor past the end (the pool shrank) starts over.
        let request = slash24(&[], Some(9999), 1);
        assert_eq!(
            allocate(Strategy::Sequential, &request, &[]).unwrap(),
            vec![2]
        );
    }

    #[test]
    fn sequential_never_reuses_offsets_before_the_cursor_when_wrapping() {
        // Free: 5 (before the cursor) and 250 (after it); asking for both.
        let allocated: Vec<u64> = (2..255).filter(|o| *o != 5 && *o != 250).collect();
        let request = slash24(&allocated, Some(100), 2);
        assert_eq!(
            allocate(Strategy::Sequential, &request, &[]).unwrap(),
            vec![250, 5]
        );
    }

    #[test]
    fn dense_pack_fills_holes_first() {
        let request = slash24(&[2, 3, 5, 6, 9], Some(200), 3);
        assert_eq!(
            allocate(Strategy::DensePack, &request, &[]).unwrap(),
            vec![4, 7, 8]
        );
    }

    #[test]
    fn random_replays_with_the_same_seed_and_varies_with_another() {
        let request = slash24(&[10, 20, 30], None, 5);
        let first = allocate(Strategy::Random, &request, &[]).unwrap();
        assert_eq!(first, allocate(Strategy::Random, &request, &[]).unwrap());
        let other_seed = Request {
            seed: 8,
            ..request.clone()
        };
        assert_ne!(first, allocate(Strategy::Random, &other_seed, &[]).unwrap());
    }

    #[test]
    fn random_is_roughly_uniform() {
        // 40 free offsets, 20,000 single draws: each should get about 500.
        let request = Request {
            size: 40,
            count: 1,
            ..Request::default()
        };
        let mut hits = [0u32; 40];
        for seed in 0..20_000 {
            let picked = allocate(
                Strategy::Random,
                &Request {
                    seed,
                    ..request.clone()
                },
                &[],
            );
            hits[picked.unwrap()[0] as usize] += 1;
        }
        assert!(hits.iter().all(|&h| (350..650).contains(&h)), "{hits:?}");
    }

    #[rstest]
    #[case::sequential(Strategy::Sequential)]
    #[case::random(Strategy::Random)]
    #[case::dense_pack(Strategy::DensePack)]
    fn every_strategy_hands_out_only_valid_distinct_offsets_until_exhausted(
        #[case] strategy: Strategy,
    ) {
        let mut request = slash24(&[], None, 1);
        request.excluded.push(100..=149);
        for round in 0..(253 - 50) {
            request.seed = round;
            let picked = allocate(strategy, &request, &[]).unwrap();
            check_answer(&request, &picked).unwrap();
            request.allocated.insert(picked[0]);
            request.cursor = Some(picked[0]);
        }
        assert_eq!(
            allocate(strategy, &request, &[]),
            Err(AllocateError::Exhausted(0)),
            "{strategy:?}"
        );
    }

    #[rstest]
    #[case::sequential(Strategy::Sequential)]
    #[case::random(Strategy::Random)]
    #[case::dense_pack(Strategy::DensePack)]
    fn exhaustion_reports_how_many_are_free(#[case] strategy: Strategy) {
        let request = slash24(&(2..250).collect::<Vec<_>>(), None, 10);
        assert_eq!(
            allocate(strategy, &request, &[]),
            Err(AllocateError::Exhausted(5))
        );
    }

    #[rstest]
    #[case::sequential(Strategy::Sequential)]
    #[case::random(Strategy::Random)]
    #[case::dense_pack(Strategy::DensePack)]
    fn ipv6_sized_pools_work(#[case] strategy: Strategy) {
        // A /64 seen as offsets: huge, sparse, with allocations far apart.
        let allocated: OffsetSet = [0, 1, 1 << 63].into_iter().collect();
        let request = Request {
            size: u64::MAX,
            allocated,
            excluded: vec![0..=0],
            cursor: Some(1 << 63),
            count: 4,
            seed: 42,
        };
        let picked = allocate(strategy, &request, &[]).unwrap();
        check_answer(&request, &picked).unwrap();
    }

    #[test]
    fn config_and_zero_count_are_rejected() {
        let request = slash24(&[], None, 1);
        let config = [("step".to_string(), "2".to_string())];
        assert!(matches!(
            allocate(Strategy::Sequential, &request, &config),
            Err(AllocateError::InvalidConfig(_))
        ));
        let zero = slash24(&[], None, 0);
        assert!(matches!(
            allocate(Strategy::DensePack, &zero, &[]),
            Err(AllocateError::InvalidRequest(_))
        ));
    }

    #[test]
    fn check_answer_catches_bad_plans() {
        let request = slash24(&[5], None, 2);
        assert!(check_answer(&request, &[3, 4]).is_ok());
        assert!(
            check_answer(&request, &[3])
                .unwrap_err()
                .contains("asked for 2")
        );
        assert!(
            check_answer(&request, &[3, 5])
                .unwrap_err()
                .contains("already allocated")
        );
        assert!(
            check_answer(&request, &[3, 255])
                .unwrap_err()
                .contains("excluded")
        );
        assert!(
            check_answer(&request, &[3, 256])
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            check_answer(&request, &[3, 3])
                .unwrap_err()
                .contains("twice")
        );
    }
}
