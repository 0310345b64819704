//! The plugin runtime: one wasmtime `Engine`, components compiled once per
//! digest, a fresh sandboxed `Store` for every call.
//!
//! Calls are synchronous and CPU-bound (a few microseconds to a few
//! milliseconds); async callers run them on tokio's blocking pool.

pub mod bindings;
mod cache;
mod clb;
pub mod dir_source;
mod error;
mod ipam;
pub mod kind;
pub mod kube_source;
mod metrics;
mod plugin;
mod registry;
mod sandbox;
pub mod text;
mod tunnel;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use error::{CallError, LoadError, PluginRef};
pub use metrics::RuntimeMetrics;
pub use plugin::{Plugin, PluginInfo, World};
pub use registry::{PluginEvent, PluginSource, Registry};

use cache::CompileCache;
pub use cache::private_dir as private_cache_dir;
use sandbox::Sandbox;

/// Runs a plugin call (or anything that makes one) on tokio's blocking pool,
/// inside the caller's span, so a trace shows the call under its reconcile.
pub fn spawn_call<T, F>(call: F) -> tokio::task::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(call))
}

/// Per-plugin limits; the defaults suit decision logic that takes microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of one call, instantiation included.
    pub deadline: Duration,
    /// Linear memory one instance may grow to.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(250),
            memory_bytes: 64 << 20,
        }
    }
}

/// How a plugin is run: its limits and the configuration passed to every call
/// (before the per-object configuration of the policy that selected it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginSettings {
    pub limits: Limits,
    pub config: Vec<(String, String)>,
}

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled plugins are kept (see `private_cache_dir`); `None`, or
    /// a directory that is not safe, compiles in memory every load.
    pub cache_dir: Option<PathBuf>,
    /// Instances that may exist at once (the pooling allocator's slots).
    pub max_instances: u32,
    /// No plugin's memory limit may exceed this.
    pub max_memory_bytes: usize,
    /// Granularity of deadlines.
    pub epoch_tick: Duration,
    /// Reuse pre-reserved instance slots (a long-running controller). A
    /// one-shot process such as `knit-ipam` makes two instances and exits, so
    /// it allocates on demand instead of reserving a pool it never reuses.
    pub pooling_allocator: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_instances: 64,
            max_memory_bytes: 512 << 20,
            epoch_tick: Duration::from_millis(5),
            pooling_allocator: true,
        }
    }
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<Sandbox>,
    cache: Option<CompileCache>,
    config: RuntimeConfig,
    metrics: Arc<RuntimeMetrics>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig, metrics: Arc<RuntimeMetrics>) -> anyhow::Result<Arc<Self>> {
        let mut engine_config = Config::new();
        engine_config
            .wasm_component_model(true)
            .epoch_interruption(true);
        if config.pooling_allocator {
            engine_config
                .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(&config)));
        }
        let engine = Engine::new(&engine_config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        sandbox::link_bounded_waits(&mut linker)?;
        bindings::host::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;

        // A cache that is not safe to load native code from is not used:
        // plugins then compile in memory, which is slower, never unsafe.
        let cache =
            config
                .cache_dir
                .as_ref()
                .and_then(|dir| match CompileCache::open(dir, &engine) {
                    Ok(cache) => Some(cache),
                    Err(why) => {
                        tracing::warn!("not caching compiled plugins: {why}");
                        None
                    }
                });
        start_epoch_ticker(&engine, config.epoch_tick);
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache,
            config,
            metrics,
        }))
    }

    pub fn metrics(&self) -> &Arc<RuntimeMetrics> {
        &self.metrics
    }

    /// The whole load pipeline short of swapping it in: hash, compile (or map
    /// the cached build), link against the world, `describe()`. Blocking.
    pub fn load(
        &self,
        name: &str,
        bytes: &[u8],
        settings: PluginSettings,
        expected_world: Option<World>,
    ) -> Result<Plugin, LoadError> {
        if settings.limits.memory_bytes > self.config.max_memory_bytes {
            return Err(LoadError::Limits(format!(
                "memory limit {} exceeds the runtime's maximum of {}",
                settings.limits.memory_bytes, self.config.max_memory_bytes
            )));
        }
        if settings.limits.deadline.is_zero() {
            return Err(LoadError::Limits("deadline must be above zero".into()));
        }
        let digest = digest_of(bytes);
        let started = Instant::now();
        let component = self.compile(&digest, bytes)?;
        let compile_time = started.elapsed();
        plugin::Plugin::link(
            self,
            name,
            digest,
            bytes.len(),
            compile_time,
            component,
            settings,
            expected_world,
        )
    }

    fn compile(&self, digest: &str, bytes: &[u8]) -> Result<Component, LoadError> {
        let hex = digest.trim_start_matches("sha256:");
        let compiled = match &self.cache {
            Some(cache) => cache.component(&self.engine, hex, bytes),
            None => Component::new(&self.engine, bytes),
        };
        compiled.map_err(|error| {
            LoadError::Compile(text::clean(&format!("{error:#}"), text::MESSAGE_LIMIT))
        })
    }

    fn deadline_ticks(&self, deadline: Duration) -> u64 {
        // +1: the tick in progress when the call starts is already partly gone.
        (deadline
            .as_nanos()
            .div_ceil(self.config.epoch_tick.as_nanos()) as u64)
            + 1
    }
}

/// `sha256:<hex>` of a plugin's bytes: its identity in the cache, in status
/// and in logs.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Slots for `max_instances` instances, reused call after call.
fn pooling_config(config: &RuntimeConfig) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    // A component is a handful of core instances (the program, WASI
    // adapters, shims), with one memory and table each at most.
    pool.total_component_instances(config.max_instances)
        .total_core_instances(config.max_instances * 8)
        .total_memories(config.max_instances * 2)
        .total_tables(config.max_instances * 8)
        .max_memory_size(config.max_memory_bytes)
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        .max_tables_per_component(16);
    // A fresh instance per call makes slot reuse the hot path. Where the
    // kernel can say which pages a call dirtied (PAGEMAP_SCAN, Linux 6.7+),
    // reset just those with memset and keep them resident, so the next call
    // takes no page faults: fresh-instance calls get ~2x faster. Without it,
    // keeping memory resident would memset whole slots, so leave the
    // default (madvise) alone.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(4 << 20)
            .table_keep_resident(1 << 20);
    }
    pool
}

/// Advances the engine's epoch so running calls notice their deadline; stops
/// when the engine is dropped.
fn start_epoch_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("knit-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(tick);
            }
        })
        .expect("spawning the epoch thread");
}
