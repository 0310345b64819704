//! A loaded plugin: a linked, described component ready to be instantiated.

use std::time::{Duration, Instant, SystemTime};

use wasmtime::component::Component;
use wasmtime::{Store, Trap};

use super::bindings::types::ConfigEntry;
use super::bindings::{PACKAGE, PACKAGE_VERSION, clb_allocator, ipam_strategy, tunnel_mapper};
use super::sandbox::{Sandbox, TRANSFER_LIMIT, WaitedPastDeadline};
use super::text;
use super::{CallError, LoadError, PluginRef, PluginSettings, Runtime};

/// The worlds a plugin can implement. Each is recognised by the domain
/// interface it exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum World {
    IpamStrategy,
    ClbAllocator,
    TunnelMapper,
}

impl World {
    pub const ALL: [World; 3] = [
        World::IpamStrategy,
        World::ClbAllocator,
        World::TunnelMapper,
    ];

    pub fn name(self) -> &'static str {
        match self {
            World::IpamStrategy => "ipam-strategy",
            World::ClbAllocator => "clb-allocator",
            World::TunnelMapper => "tunnel-mapper",
        }
    }

    /// The exported interface that makes a component this world.
    fn interface(self) -> &'static str {
        match self {
            World::IpamStrategy => "ipam",
            World::ClbAllocator => "clb",
            World::TunnelMapper => "tunnel",
        }
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What `describe()` returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
}

pub(super) enum Pre {
    IpamStrategy(ipam_strategy::IpamStrategyPre<Sandbox>),
    ClbAllocator(clb_allocator::ClbAllocatorPre<Sandbox>),
    TunnelMapper(tunnel_mapper::TunnelMapperPre<Sandbox>),
}

pub struct Plugin {
    /// The name policies refer to (file stem or `Plugin` object name).
    pub name: String,
    pub info: PluginInfo,
    pub world: World,
    pub digest: String,
    pub size_bytes: usize,
    pub compile_time: Duration,
    /// Interfaces the component imports, e.g. `wasi:cli/stdout@0.2.0`.
    pub imports: Vec<String>,
    pub settings: PluginSettings,
    /// Where the registry took it from (a built-in, a file, a `Plugin`
    /// object); `None` when it was loaded directly, outside a registry.
    pub source: Option<super::PluginSource>,
    pub loaded_at: SystemTime,
    pub(super) pre: Pre,
    runtime: std::sync::Arc<RuntimeHandle>,
}

/// What a plugin needs from the runtime to make calls.
pub(super) struct RuntimeHandle {
    engine: wasmtime::Engine,
    deadline_ticks: u64,
    metrics: std::sync::Arc<super::RuntimeMetrics>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plugin({} {})", self.reference(), self.world)
    }
}

impl Plugin {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn link(
        runtime: &Runtime,
        name: &str,
        digest: String,
        size_bytes: usize,
        compile_time: Duration,
        component: Component,
        settings: PluginSettings,
        expected_world: Option<World>,
    ) -> Result<Plugin, LoadError> {
        let engine = &runtime.engine;
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
        // Import names are the component's own: shown by `plugin check`.
        let imports: Vec<String> = ty
            .imports(engine)
            .map(|(n, _)| text::clean(n, text::NAME_LIMIT))
            .collect();
        let world = detect_world(&exports)?;
        if let Some(expected) = expected_world
            && expected != world
        {
            return Err(LoadError::WrongWorld(format!(
                "component implements the {world} world, expected {expected}"
            )));
        }
        let instance_pre = runtime
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(text::clean(&format!("{e:#}"), text::MESSAGE_LIMIT)))?;
        let mismatch = |e: wasmtime::Error| {
            LoadError::WrongWorld(format!(
                "component claims the {world} world but does not match it: {}",
                text::clean(&format!("{e:#}"), text::MESSAGE_LIMIT)
            ))
        };
        let pre = match world {
            World::IpamStrategy => Pre::IpamStrategy(
                ipam_strategy::IpamStrategyPre::new(instance_pre).map_err(mismatch)?,
            ),
            World::ClbAllocator => Pre::ClbAllocator(
                clb_allocator::ClbAllocatorPre::new(instance_pre).map_err(mismatch)?,
            ),
            World::TunnelMapper => Pre::TunnelMapper(
                tunnel_mapper::TunnelMapperPre::new(instance_pre).map_err(mismatch)?,
            ),
        };
        let runtime = std::sync::Arc::new(RuntimeHandle {
            engine: engine.clone(),
            deadline_ticks: runtime.deadline_ticks(settings.limits.deadline),
            metrics: runtime.metrics.clone(),
        });
        // `describe()` needs a plugin to call, so the info is filled in after.
        let mut plugin = Plugin {
            name: name.to_string(),
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
            },
            world,
            digest,
            size_bytes,
            compile_time,
            imports,
            settings,
            source: None,
            loaded_at: SystemTime::now(),
            pre,
            runtime,
        };
        plugin.info = plugin.describe().map_err(LoadError::Describe)?;
        Ok(plugin)
    }

    pub fn reference(&self) -> PluginRef {
        PluginRef {
            name: self.name.clone(),
            version: self.info.version.clone(),
            digest: self.digest.clone(),
        }
    }

    /// `name@version`, as written into the status of the objects it decided for.
    pub fn name_version(&self) -> String {
        format!("{}@{}", self.name, self.info.version)
    }

    pub fn describe(&self) -> Result<PluginInfo, CallError> {
        let info = self.call("describe", |store, pre| match pre {
            Pre::IpamStrategy(pre) => {
                let instance = pre.instantiate(&mut *store)?;
                instance.knit_plugin_describe().call_describe(&mut *store)
            }
            Pre::ClbAllocator(pre) => {
                let instance = pre.instantiate(&mut *store)?;
                instance.knit_plugin_describe().call_describe(&mut *store)
            }
            Pre::TunnelMapper(pre) => {
                let instance = pre.instantiate(&mut *store)?;
                instance.knit_plugin_describe().call_describe(&mut *store)
            }
        })?;
        Ok(PluginInfo {
            name: plugin_name(info.name).map_err(|reason| self.bad_output(reason))?,
            version: text::identifier("the version", info.version, VERSION_LIMIT)
                .map_err(|reason| self.bad_output(reason))?,
            description: text::clean(&info.description, text::MESSAGE_LIMIT),
        })
    }

    /// Runs `f` against a fresh instance in a fresh store with this plugin's
    /// limits, and turns every way it can fail into a `CallError`.
    pub(super) fn call<R>(
        &self,
        function: &'static str,
        f: impl FnOnce(&mut Store<Sandbox>, &Pre) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        // One span per call: which plugin, which function, how long, and how
        // it failed if it did (traces carry it when OTLP is configured).
        let span = tracing::info_span!(
            "plugin call",
            plugin = %self.name,
            plugin.version = tracing::field::Empty,
            function,
            error = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        // Unknown until `describe` has answered once.
        if !self.info.version.is_empty() {
            span.record("plugin.version", self.info.version.as_str());
        }
        let _entered = span.enter();
        let started = Instant::now();
        let limits = self.settings.limits;
        let mut store = Store::new(
            &self.runtime.engine,
            Sandbox::new(&self.name, limits.memory_bytes, started + limits.deadline),
        );
        store.limiter(|sandbox| sandbox);
        store.set_hostcall_fuel(TRANSFER_LIMIT);
        store.set_epoch_deadline(self.runtime.deadline_ticks);
        store.epoch_deadline_trap();

        let result = f(&mut store, &self.pre);
        let sandbox = store.data();
        sandbox.forward_output();
        let result = result.map_err(|error| self.classify(error, sandbox.memory_limit_hit));
        if let Err(error) = &result {
            span.record("error", error.kind());
            span.record("otel.status_code", "ERROR");
        }
        self.runtime.metrics.observe_call(
            &self.name,
            function,
            started.elapsed(),
            result.as_ref().err().map(CallError::kind),
        );
        result
    }

    fn classify(&self, error: wasmtime::Error, memory_limit_hit: bool) -> CallError {
        let plugin = self.reference();
        let limits = self.settings.limits;
        if memory_limit_hit {
            return CallError::MemoryLimit {
                plugin,
                limit_bytes: limits.memory_bytes,
            };
        }
        if error.downcast_ref::<WaitedPastDeadline>().is_some() {
            return CallError::Deadline {
                plugin,
                deadline: limits.deadline,
            };
        }
        // A trap's text quotes function names from the component, which the
        // plugin chose.
        let message = text::clean(&format!("{error:#}"), text::MESSAGE_LIMIT);
        // wasmtime's error for this is private; its text is the only sign.
        if message.contains("fuel allocated for hostcalls has been exhausted") {
            return CallError::OutputBudget {
                plugin,
                limit_bytes: TRANSFER_LIMIT,
            };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Deadline {
                plugin,
                deadline: limits.deadline,
            },
            Some(_) => CallError::Trap { plugin, message },
            None => CallError::Instantiate { plugin, message },
        }
    }

    pub(super) fn deadline_ticks(&self) -> u64 {
        self.runtime.deadline_ticks
    }

    /// Fails unless this plugin implements `world`.
    pub fn expect_world(&self, world: World) -> Result<(), CallError> {
        if self.world == world {
            Ok(())
        } else {
            Err(self.wrong_world(world))
        }
    }

    /// An answer the host refuses to pass on: out of bounds, or failing the
    /// world's check.
    pub(super) fn bad_output(&self, reason: String) -> CallError {
        CallError::BadOutput {
            plugin: self.reference(),
            reason,
        }
    }

    /// What every call passes as `config`: this plugin's settings, then the
    /// configuration of the object decided for.
    pub(super) fn config_entries(&self, config: &[(String, String)]) -> Vec<ConfigEntry> {
        self.settings
            .config
            .iter()
            .chain(config)
            .map(|(key, value)| ConfigEntry {
                key: key.clone(),
                value: value.clone(),
            })
            .collect()
    }

    pub(super) fn wrong_world(&self, wanted: World) -> CallError {
        CallError::WrongWorld {
            plugin: self.reference(),
            actual: self.world.name(),
            wanted: wanted.name(),
        }
    }
}

/// Longest version a plugin may describe itself with (semver with
/// pre-release and build parts fits easily).
const VERSION_LIMIT: usize = 64;
/// Longest plugin name: a Kubernetes label value, like the `Plugin` object
/// names and ConfigMap keys plugins are shipped under.
const PLUGIN_NAME_LIMIT: usize = 63;

/// The name a plugin describes itself by, if it is one: policies, status
/// and file names use it, so letters, digits, `-`, `_` and `.`, starting
/// with a letter or digit.
pub(super) fn plugin_name(name: String) -> Result<String, String> {
    let name = text::identifier("the name", name, PLUGIN_NAME_LIMIT)?;
    let valid = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(format!(
            "the name {name:?} is not a plugin name (letters, digits, '-', '_' and '.', starting with a letter or digit)"
        ));
    }
    Ok(name)
}

/// Finds the world from the exports, checking the contract version on the way.
fn detect_world(exports: &[String]) -> Result<World, LoadError> {
    for world in World::ALL {
        let prefix = format!("{PACKAGE}/{}@", world.interface());
        if let Some(export) = exports.iter().find(|e| e.starts_with(&prefix)) {
            let version = &export[prefix.len()..];
            if !compatible(version, PACKAGE_VERSION) {
                return Err(LoadError::IncompatibleVersion {
                    found: format!("{PACKAGE}@{}", text::clean(version, VERSION_LIMIT)),
                });
            }
            return Ok(world);
        }
    }
    let expected: Vec<String> = World::ALL
        .iter()
        .map(|w| format!("{PACKAGE}/{}@{PACKAGE_VERSION} (world {w})", w.interface()))
        .collect();
    Err(LoadError::WrongWorld(format!(
        "component exports [{}], but a knit plugin exports one of: {}",
        text::clean(&exports.join(", "), text::MESSAGE_LIMIT),
        expected.join(", ")
    )))
}

/// Semver compatibility as the component model applies it: same major, and
/// for 0.x the same minor.
fn compatible(found: &str, host: &str) -> bool {
    let parts = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split(['.', '-', '+']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parts(found), parts(host)) {
        (Some((0, minor_a)), Some((0, minor_b))) => minor_a == minor_b,
        (Some((major_a, _)), Some((major_b, _))) => major_a == major_b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_compatibility() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.7", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(!compatible("1.0.0", "0.1.0"));
        assert!(!compatible("garbage", "0.1.0"));
    }

    #[test]
    fn plugin_names() {
        let cases = [
            ("built-in", "ipam-sequential", true),
            ("cargo's file name", "ipam_sequential", true),
            ("dotted", "acme.ipam.v2", true),
            ("empty", "", false),
            ("leading dash", "-x", false),
            ("leading dot", ".hidden", false),
            ("space", "my plugin", false),
            ("newline", "evil\nname", false),
            ("path", "../x", false),
            ("64 bytes", &"n".repeat(64), false),
            ("63 bytes", &"n".repeat(63), true),
        ];
        for (case, name, valid) in cases {
            assert_eq!(plugin_name(name.to_string()).is_ok(), valid, "case {case}");
        }
    }

    #[test]
    fn world_detection_messages() {
        let ipam = vec![
            "knit:plugin/describe@0.1.0".into(),
            "knit:plugin/ipam@0.1.0".into(),
        ];
        assert_eq!(detect_world(&ipam).unwrap(), World::IpamStrategy);
        let clb = vec![
            "knit:plugin/describe@0.1.0".into(),
            "knit:plugin/clb@0.1.0".into(),
        ];
        assert_eq!(detect_world(&clb).unwrap(), World::ClbAllocator);
        let tunnel = vec![
            "knit:plugin/describe@0.1.0".into(),
            "knit:plugin/tunnel@0.1.0".into(),
        ];
        assert_eq!(detect_world(&tunnel).unwrap(), World::TunnelMapper);
        let newer = vec!["knit:plugin/ipam@0.2.0".to_string()];
        let error = detect_world(&newer).unwrap_err().to_string();
        assert!(
            error.contains("knit:plugin@0.2.0") && error.contains("0.1.0"),
            "{error}"
        );
        let other = vec!["acme:thing/run@1.0.0".to_string()];
        let error = detect_world(&other).unwrap_err().to_string();
        assert!(
            error.contains("acme:thing/run")
                && error.contains("ipam-strategy")
                && error.contains("clb-allocator")
                && error.contains("knit:plugin/tunnel@0.1.0 (world tunnel-mapper)"),
            "{error}"
        );
    }
}
