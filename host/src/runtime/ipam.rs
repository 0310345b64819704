//! Calls into the `ipam-strategy` world.

use knit_ipam_core::{AllocateError, FreeSpace, Request, check_answer};

use super::bindings::ipam_strategy::exports::knit::plugin::ipam;
use super::plugin::Pre;
use super::{CallError, Plugin, World, text};

impl Plugin {
    /// Asks the strategy for `request.count` offsets. The outer error is the
    /// plugin failing; the inner one is the strategy's own answer (exhausted,
    /// bad config). Every offset is checked before it is returned.
    pub fn allocate(
        &self,
        request: &Request,
        config: &[(String, String)],
    ) -> Result<Result<Vec<u64>, AllocateError>, CallError> {
        let Pre::IpamStrategy(pre) = &self.pre else {
            return Err(self.wrong_world(World::IpamStrategy));
        };
        let wit_request = self.wit_request(request, config);
        let answer = self.call("allocate", |store, _| {
            let instance = pre.instantiate(&mut *store)?;
            instance
                .knit_plugin_ipam()
                .call_allocate(&mut *store, &wit_request)
        })?;
        let bad_output = |reason| self.bad_output(reason);
        match answer {
            Ok(offsets) => match check_answer(request, &offsets) {
                Ok(()) => Ok(Ok(offsets)),
                Err(reason) => Err(bad_output(reason)),
            },
            Err(ipam::AllocateError::Exhausted(claimed)) => {
                // A strategy that wrongly says "full" would mark a pool
                // exhausted: recount before believing it.
                let free = FreeSpace::new(request).map_err(bad_output)?.free_count();
                if free >= u64::from(request.count) {
                    return Err(bad_output(format!(
                        "claims the pool is exhausted ({claimed} free) but {free} offsets are free"
                    )));
                }
                Ok(Err(AllocateError::Exhausted(free)))
            }
            Err(ipam::AllocateError::InvalidConfig(why)) => Ok(Err(AllocateError::InvalidConfig(
                text::clean(&why, text::MESSAGE_LIMIT),
            ))),
            Err(ipam::AllocateError::InvalidRequest(why)) => Ok(Err(
                AllocateError::InvalidRequest(text::clean(&why, text::MESSAGE_LIMIT)),
            )),
        }
    }

    fn wit_request(&self, request: &Request, config: &[(String, String)]) -> ipam::AllocateRequest {
        ipam::AllocateRequest {
            size: request.size,
            allocated: ipam::OffsetSet {
                indexes: request.allocated.words().map(|(index, _)| index).collect(),
                bits: request.allocated.words().map(|(_, bits)| bits).collect(),
            },
            excluded: request
                .excluded
                .iter()
                .map(|r| ipam::OffsetRange {
                    first: *r.start(),
                    last: *r.end(),
                })
                .collect(),
            cursor: request.cursor,
            count: request.count,
            seed: request.seed,
            config: self.config_entries(config),
        }
    }
}

impl Plugin {
    /// Times `iterations` calls on one instance (warm: no instantiation), for
    /// `knit plugin bench` and the benchmarks. Answers are not checked here.
    pub fn time_warm_allocate(
        &self,
        request: &Request,
        iterations: usize,
    ) -> Result<Vec<std::time::Duration>, CallError> {
        let Pre::IpamStrategy(pre) = &self.pre else {
            return Err(self.wrong_world(World::IpamStrategy));
        };
        let wit_request = self.wit_request(request, &[]);
        let ticks = self.deadline_ticks();
        self.call("allocate-warm", |store, _| {
            let instance = pre.instantiate(&mut *store)?;
            let mut timings = Vec::with_capacity(iterations);
            for _ in 0..iterations {
                store.set_epoch_deadline(ticks);
                let started = std::time::Instant::now();
                let _ = instance
                    .knit_plugin_ipam()
                    .call_allocate(&mut *store, &wit_request)?;
                timings.push(started.elapsed());
            }
            Ok(timings)
        })
    }
}
