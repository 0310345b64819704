//! Which plugin serves which name, and hot swap.
//!
//! A name can be provided by several sources; the strongest serves:
//! a `Plugin` object over a file in the plugins directory over a built-in.
//! Swapping is replacing an `Arc`: calls in flight hold the old one and finish
//! on it, new calls get the new one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;

use super::{CallError, LoadError, Plugin, PluginSettings, Runtime, World, digest_of};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PluginSource {
    /// Compiled into the `knit` binary.
    BuiltIn,
    /// A `.wasm` file in the plugins directory.
    Directory(PathBuf),
    /// A `Plugin` object (its name).
    Object(String),
}

impl PluginSource {
    /// Higher serves over lower.
    fn strength(&self) -> u8 {
        match self {
            PluginSource::BuiltIn => 0,
            PluginSource::Directory(_) => 1,
            PluginSource::Object(_) => 2,
        }
    }
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginSource::BuiltIn => f.write_str("built-in"),
            PluginSource::Directory(path) => write!(f, "file {}", path.display()),
            PluginSource::Object(name) => write!(f, "Plugin {name}"),
        }
    }
}

/// Told to subscribers so they can requeue every object that uses `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginEvent {
    /// A new version serves `name` (also after a removal uncovers another).
    Serving {
        name: String,
        version: String,
        digest: String,
    },
    /// A new version was refused; whatever served before still does.
    Rejected {
        name: String,
        source: String,
        error: String,
    },
    /// Nothing serves `name` any more.
    Removed { name: String },
}

struct Entry {
    source: PluginSource,
    plugin: Arc<Plugin>,
}

pub struct Registry {
    runtime: Arc<Runtime>,
    /// Keyed by plugin name and source strength.
    entries: RwLock<HashMap<(String, u8), Entry>>,
    events: broadcast::Sender<PluginEvent>,
}

impl Registry {
    pub fn new(runtime: Arc<Runtime>) -> Arc<Self> {
        Arc::new(Registry {
            runtime,
            entries: RwLock::default(),
            events: broadcast::channel(1024).0,
        })
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// A receiver of plugin changes. A receiver that lags should treat it as
    /// "everything changed" and requeue all objects.
    pub fn subscribe(&self) -> broadcast::Receiver<PluginEvent> {
        self.events.subscribe()
    }

    /// The plugin serving `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Plugin>, CallError> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        self.strongest(&entries, name)
            .map(|entry| entry.plugin.clone())
            .ok_or_else(|| CallError::NotFound(name.to_string()))
    }

    /// The plugin serving `name`, which must implement `world`.
    pub fn get_world(&self, name: &str, world: World) -> Result<Arc<Plugin>, CallError> {
        let plugin = self.get(name)?;
        plugin.expect_world(world)?;
        Ok(plugin)
    }

    /// Every serving plugin, by name.
    pub fn serving(&self) -> Vec<Arc<Plugin>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&String> = entries.keys().map(|(name, _)| name).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| self.strongest(&entries, name).map(|e| e.plugin.clone()))
            .collect()
    }

    /// What `source` currently provides for `name`, whether or not it serves.
    pub fn provided_by(&self, name: &str, source: &PluginSource) -> Option<Arc<Plugin>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&(name.to_string(), source.strength()))
            .filter(|entry| &entry.source == source)
            .map(|entry| entry.plugin.clone())
    }

    /// Loads (or keeps, when the bytes and settings are unchanged) `name` from
    /// `source`. Blocking: compiles. On failure the previous version stays.
    pub fn load(
        &self,
        source: PluginSource,
        name: &str,
        bytes: &[u8],
        settings: PluginSettings,
        expected_world: Option<World>,
    ) -> Result<Arc<Plugin>, LoadError> {
        let key = (name.to_string(), source.strength());
        let digest = digest_of(bytes);
        {
            let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = entries.get(&key) {
                if entry.source != source {
                    return Err(LoadError::NameTaken {
                        name: name.to_string(),
                        owner: entry.source.to_string(),
                    });
                }
                if entry.plugin.digest == digest
                    && entry.plugin.settings == settings
                    && expected_world.is_none_or(|w| w == entry.plugin.world)
                {
                    self.runtime.metrics().observe_reload(name, "unchanged");
                    return Ok(entry.plugin.clone());
                }
            }
        }
        let plugin = match self.runtime.load(name, bytes, settings, expected_world) {
            Ok(mut plugin) => {
                plugin.source = Some(source.clone());
                Arc::new(plugin)
            }
            Err(error) => {
                self.runtime.metrics().observe_reload(name, "rejected");
                tracing::warn!(plugin = name, %source, %digest, %error, "plugin rejected");
                let _ = self.events.send(PluginEvent::Rejected {
                    name: name.to_string(),
                    source: source.to_string(),
                    error: error.to_string(),
                });
                return Err(error);
            }
        };
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.insert(
            key,
            Entry {
                source: source.clone(),
                plugin: plugin.clone(),
            },
        );
        let serves = self
            .strongest(&entries, name)
            .is_some_and(|entry| Arc::ptr_eq(&entry.plugin, &plugin));
        // A file named like a built-in replaces it silently otherwise: say
        // so, with both digests, each time a stronger source takes a name.
        let overridden: Vec<(PluginSource, String)> = (0..source.strength())
            .filter_map(|strength| entries.get(&(name.to_string(), strength)))
            .map(|entry| (entry.source.clone(), entry.plugin.digest.clone()))
            .collect();
        drop(entries);
        if serves {
            for (weaker, weaker_digest) in overridden {
                tracing::warn!(
                    plugin = name, %source, %digest, overridden = %weaker, overridden_digest = %weaker_digest,
                    "{source} overrides the {weaker} plugin of the same name"
                );
            }
        }
        self.runtime.metrics().observe_reload(name, "loaded");
        tracing::info!(
            plugin = name, version = %plugin.info.version, digest = %plugin.digest, %source, serves,
            "plugin loaded"
        );
        if serves {
            let _ = self.events.send(PluginEvent::Serving {
                name: name.to_string(),
                version: plugin.info.version.clone(),
                digest: plugin.digest.clone(),
            });
        }
        Ok(plugin)
    }

    /// Forgets what `source` provided for `name`; a weaker source may take over.
    pub fn remove(&self, source: &PluginSource, name: &str) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let key = (name.to_string(), source.strength());
        if entries
            .get(&key)
            .is_none_or(|entry| &entry.source != source)
        {
            return;
        }
        let was_serving = self
            .strongest(&entries, name)
            .is_some_and(|entry| &entry.source == source);
        entries.remove(&key);
        let now = self
            .strongest(&entries, name)
            .map(|entry| entry.plugin.clone());
        drop(entries);
        self.runtime.metrics().observe_reload(name, "removed");
        tracing::info!(plugin = name, %source, "plugin removed");
        if !was_serving {
            return;
        }
        let _ = self.events.send(match now {
            Some(plugin) => PluginEvent::Serving {
                name: name.to_string(),
                version: plugin.info.version.clone(),
                digest: plugin.digest.clone(),
            },
            None => PluginEvent::Removed {
                name: name.to_string(),
            },
        });
    }

    /// `(name, source)` of every entry whose source matches, so a source can
    /// find what it provided and no longer does.
    pub fn names_from(
        &self,
        matches: impl Fn(&PluginSource) -> bool,
    ) -> Vec<(String, PluginSource)> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .filter(|(_, entry)| matches(&entry.source))
            .map(|((name, _), entry)| (name.clone(), entry.source.clone()))
            .collect()
    }

    fn strongest<'a>(
        &self,
        entries: &'a HashMap<(String, u8), Entry>,
        name: &str,
    ) -> Option<&'a Entry> {
        (0..=2)
            .rev()
            .find_map(|strength| entries.get(&(name.to_string(), strength)))
    }

    /// Loads a plugin in the blocking pool, for async callers.
    pub async fn load_async(
        self: &Arc<Self>,
        source: PluginSource,
        name: String,
        bytes: Vec<u8>,
        settings: PluginSettings,
        expected_world: Option<World>,
    ) -> Result<Arc<Plugin>, LoadError> {
        let registry = self.clone();
        tokio::task::spawn_blocking(move || {
            registry.load(source, &name, &bytes, settings, expected_world)
        })
        .await
        .unwrap_or_else(|join| Err(LoadError::Compile(format!("load task failed: {join}"))))
    }
}
