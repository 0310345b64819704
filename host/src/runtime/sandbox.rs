//! What a plugin instance may touch: its store data, the resource limiter, and
//! the `host` import. No preopened directories, environment, network or real
//! clocks; stdout and stderr are captured and forwarded to tracing.
//!
//! The deadline holds while a plugin waits, not only while it computes.
//! Epoch interruption fires only when the guest runs wasm again, so a guest
//! blocked in `wasi:io/poll` on a clock (`std::thread::sleep`) would hold its
//! thread for as long as it liked. So the clock's subscriptions are ready at
//! once (the clock is frozen: waiting for it means nothing), and every wait
//! the guest can make through `wasi:io/poll` is cut off at the call's
//! deadline by the host, whatever it waits for.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::sync::io::poll;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::p2::{DynPollable, Pollable};
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::host::{self, LogField, LogLevel};
use super::text;

/// How much stdout/stderr a single call may produce before its writes fail.
const OUTPUT_CAPACITY: usize = 256 * 1024;
/// Structured log calls allowed per plugin call; more are counted, not logged.
const LOG_BUDGET: u32 = 256;
/// Longest log message or field value forwarded, in bytes.
const LOG_TEXT_LIMIT: usize = 4096;
/// Most bytes the host copies out of the guest in one transfer: a call's
/// answer, or the arguments of one `log` call. wasmtime's default (128 MiB)
/// would let a 64 MiB plugin make the host copy 128 MiB per call. The largest
/// legitimate answer (the tunnel mapper's, 1,000 Ingresses) is about 0.3 MiB.
pub const TRANSFER_LIMIT: usize = 8 << 20;
/// Table elements a plugin may grow to (function tables, resources).
const TABLE_ELEMENTS_LIMIT: usize = 100_000;

/// Per-call store data.
pub struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    plugin: String,
    memory_limit: usize,
    /// When the call must have returned; waits end here.
    deadline: Instant,
    /// Set when the plugin asked for more memory than its limit, so the trap
    /// that follows is reported as what it is.
    pub(super) memory_limit_hit: bool,
    logs_suppressed: u32,
    log_budget: u32,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl Sandbox {
    pub fn new(plugin: &str, memory_limit: usize, deadline: Instant) -> Self {
        let stdout = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let stderr = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        // Fixed randomness and a frozen clock keep plugins pure: the same input
        // gives the same answer, which replay and `plugin test` rely on.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .secure_random(wasmtime_wasi::Deterministic::new(vec![
                0x6b, 0x6e, 0x69, 0x74,
            ]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![
                0x6b, 0x6e, 0x69, 0x74,
            ]))
            .insecure_random_seed(0)
            .wall_clock(FrozenClock)
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        Sandbox {
            wasi,
            table: ResourceTable::new(),
            plugin: plugin.to_string(),
            memory_limit,
            deadline,
            memory_limit_hit: false,
            logs_suppressed: 0,
            log_budget: LOG_BUDGET,
            stdout,
            stderr,
        }
    }

    /// Sends what the plugin printed to tracing, one event per line.
    pub fn forward_output(&self) {
        for (stream, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let bytes = pipe.contents();
            for line in String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| !l.is_empty())
            {
                let line = text::clean(line, LOG_TEXT_LIMIT);
                tracing::info!(target: "knit::plugin::output", plugin = %self.plugin, stream, "{line}");
            }
        }
        if self.logs_suppressed > 0 {
            tracing::warn!(
                plugin = %self.plugin,
                suppressed = self.logs_suppressed,
                "plugin logged more than {LOG_BUDGET} times in one call"
            );
        }
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for Sandbox {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_limit_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_LIMIT)
    }
}

impl host::Host for Sandbox {
    fn log(&mut self, level: LogLevel, message: String, fields: Vec<LogField>) {
        if self.log_budget == 0 {
            self.logs_suppressed += 1;
            return;
        }
        self.log_budget -= 1;
        let message = text::clean(&message, LOG_TEXT_LIMIT);
        let fields = fields
            .iter()
            .take(32)
            .map(|f| {
                format!(
                    "{}={}",
                    text::clean(&f.key, LOG_TEXT_LIMIT),
                    text::clean(&f.value, LOG_TEXT_LIMIT)
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        let plugin = &self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(target: "knit::plugin", plugin, fields, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "knit::plugin", plugin, fields, "{message}"),
            LogLevel::Info => tracing::info!(target: "knit::plugin", plugin, fields, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "knit::plugin", plugin, fields, "{message}"),
            LogLevel::Error => tracing::error!(target: "knit::plugin", plugin, fields, "{message}"),
        }
    }
}

impl super::bindings::types::Host for Sandbox {}

/// A wall clock stopped at the epoch: plugins must not depend on time.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Replaces WASI's monotonic clock and `wasi:io/poll` with the bounded ones
/// below (see the module doc). Call after the WASI interfaces are linked.
pub fn link_bounded_waits(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<Sandbox, Waits>(linker, Sandbox::waits)?;
    poll::add_to_linker::<Sandbox, Waits>(linker, Sandbox::waits)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A wait cut off at the call's deadline. `Plugin::call` reports it as the
/// deadline being passed.
#[derive(Debug, thiserror::Error)]
#[error("the plugin waited past its deadline")]
pub struct WaitedPastDeadline;

impl Sandbox {
    fn waits(&mut self) -> WaitsView<'_> {
        WaitsView {
            table: &mut self.table,
            deadline: self.deadline,
        }
    }
}

struct Waits;

impl HasData for Waits {
    type Data<'a> = WaitsView<'a>;
}

struct WaitsView<'a> {
    table: &'a mut ResourceTable,
    deadline: Instant,
}

impl WaitsView<'_> {
    /// Runs a wait until it ends or the deadline comes, whichever is first.
    fn bounded<R>(
        deadline: Instant,
        wait: impl Future<Output = wasmtime::Result<R>>,
    ) -> wasmtime::Result<R> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        wasmtime_wasi::runtime::in_tokio(async { tokio::time::timeout(remaining, wait).await })
            .unwrap_or_else(|_elapsed| Err(WaitedPastDeadline.into()))
    }

    fn ready_now(&mut self) -> wasmtime::Result<Resource<DynPollable>> {
        let ready = self.table.push(ReadyNow)?;
        wasmtime_wasi::p2::subscribe(self.table, ready)
    }
}

/// A frozen monotonic clock at zero whose subscriptions are ready at once.
impl monotonic_clock::Host for WaitsView<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        Ok(0)
    }
    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        Ok(1_000_000_000)
    }
    fn subscribe_instant(
        &mut self,
        _when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.ready_now()
    }
    fn subscribe_duration(
        &mut self,
        _duration: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.ready_now()
    }
}

impl poll::Host for WaitsView<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        Self::bounded(
            self.deadline,
            async_poll::Host::poll(&mut *self.table, pollables),
        )
    }
}

impl poll::HostPollable for WaitsView<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        Self::bounded(
            self.deadline,
            async_poll::HostPollable::ready(&mut *self.table, pollable),
        )
    }
    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        Self::bounded(
            self.deadline,
            async_poll::HostPollable::block(&mut *self.table, pollable),
        )
    }
    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(&mut *self.table, pollable)
    }
}

/// A pollable that is always ready.
struct ReadyNow;

impl Pollable for ReadyNow {
    fn ready<'a, 'b>(&'a mut self) -> Pin<Box<dyn Future<Output = ()> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_wait_is_cut_off_at_the_deadline() {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(50);
        let result: wasmtime::Result<()> = WaitsView::bounded(deadline, std::future::pending());
        let error = result.unwrap_err();
        assert!(
            error.downcast_ref::<WaitedPastDeadline>().is_some(),
            "{error}"
        );
        // Without the bound this never returns; the margin is generous.
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_wait_that_ends_in_time_keeps_its_result() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let result = WaitsView::bounded(deadline, async { Ok(7) });
        assert_eq!(result.unwrap(), 7);
    }
}
