//! What a plugin instance may touch: its store data, the resource limiter, and
//! the `host` import. No preopened directories, environment, network or real
//! clocks; stdout and stderr are captured and forwarded to tracing.

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::host::{self, LogField, LogLevel};

/// How much stdout/stderr a single call may produce before its writes fail.
const OUTPUT_CAPACITY: usize = 256 * 1024;
/// Structured log calls allowed per plugin call; more are counted, not logged.
const LOG_BUDGET: u32 = 256;
/// Longest log message or field value forwarded, in bytes.
const LOG_TEXT_LIMIT: usize = 4096;
/// Table elements a plugin may grow to (function tables, resources).
const TABLE_ELEMENTS_LIMIT: usize = 100_000;

/// Per-call store data.
pub struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    plugin: String,
    memory_limit: usize,
    /// Set when the plugin asked for more memory than its limit, so the trap
    /// that follows is reported as what it is.
    pub(super) memory_limit_hit: bool,
    logs_suppressed: u32,
    log_budget: u32,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl Sandbox {
    pub fn new(plugin: &str, memory_limit: usize) -> Self {
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
            .monotonic_clock(FrozenClock)
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        Sandbox {
            wasi,
            table: ResourceTable::new(),
            plugin: plugin.to_string(),
            memory_limit,
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
        let message = truncate(&message);
        let fields = fields
            .iter()
            .map(|f| format!("{}={}", truncate(&f.key), truncate(&f.value)))
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

fn truncate(text: &str) -> &str {
    if text.len() <= LOG_TEXT_LIMIT {
        return text;
    }
    let mut end = LOG_TEXT_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A clock stopped at the epoch: plugins must not depend on time.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}
