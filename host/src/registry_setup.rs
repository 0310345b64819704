//! The plugin registries knit starts from: the built-in plugins (`knit run`,
//! `knit simulate`, and the tests that need the plugins the binary ships),
//! an empty one (the `knit plugin` commands, which load their own), and one
//! plugin loaded from a file. The runtime itself knows nothing of the
//! built-ins or of files named on a command line; this is where they meet.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::runtime::{
    Plugin, PluginSettings, PluginSource, Registry, Runtime, RuntimeConfig, RuntimeMetrics,
};

/// A registry serving the plugins compiled into the binary.
pub fn builtin_registry(
    cache_dir: Option<PathBuf>,
    metrics: Arc<RuntimeMetrics>,
) -> anyhow::Result<Arc<Registry>> {
    let registry = empty_registry(cache_dir, metrics)?;
    for (name, bytes) in crate::builtin::BUILTIN_PLUGINS {
        registry
            .load(
                PluginSource::BuiltIn,
                name,
                bytes,
                PluginSettings::default(),
                None,
            )
            .with_context(|| format!("built-in plugin {name}"))?;
    }
    Ok(registry)
}

/// A registry with no plugins, for commands that load their own.
pub fn empty_registry(
    cache_dir: Option<PathBuf>,
    metrics: Arc<RuntimeMetrics>,
) -> anyhow::Result<Arc<Registry>> {
    let runtime = Runtime::new(
        RuntimeConfig {
            cache_dir,
            ..RuntimeConfig::default()
        },
        metrics,
    )?;
    Ok(Registry::new(runtime))
}

/// The plugin in a `.wasm` file, named by the file's stem until it
/// describes itself.
pub fn load_file(registry: &Registry, file: &Path) -> anyhow::Result<Arc<Plugin>> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_string();
    let plugin = registry
        .load(
            PluginSource::Directory(file.to_path_buf()),
            &name,
            &bytes,
            PluginSettings::default(),
            None,
        )
        .with_context(|| format!("loading {}", file.display()))?;
    Ok(plugin)
}
