//! Finds and loads the one strategy plugin an invocation needs:
//! `<pluginsDir>/<name>.wasm`; else the file cargo names a built plugin
//! (`ipam_sequential.wasm` for `ipam-sequential`) if it describes itself as
//! `name`; else the plugin built into the binary. Native code comes from the
//! compile cache, so a warm invocation maps it and compiles nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{CniError, Code};
use crate::domains::ipam::claim::StrategySource;
use crate::runtime::{
    Plugin, PluginSettings, Runtime, RuntimeConfig, RuntimeMetrics, World, private_cache_dir,
};

/// Where the cache goes when the configured directory cannot be written.
const FALLBACK_CACHE: &str = "knit-ipam-cache";

pub struct StrategyLoader {
    plugins_dir: PathBuf,
    cache_dir: PathBuf,
}

impl StrategyLoader {
    pub fn new(plugins_dir: &Path, cache_dir: &Path) -> Self {
        StrategyLoader {
            plugins_dir: plugins_dir.to_path_buf(),
            cache_dir: cache_dir.to_path_buf(),
        }
    }

    pub fn load(&self, name: &str) -> Result<Plugin, CniError> {
        let failed = |msg: String| CniError::new(Code::Strategy, msg);
        let runtime = Runtime::new(
            RuntimeConfig {
                cache_dir: usable_cache_dir(&self.cache_dir),
                pooling_allocator: false,
                ..RuntimeConfig::default()
            },
            Arc::new(RuntimeMetrics::default()),
        )
        .map_err(|error| failed(format!("starting the WebAssembly runtime: {error:#}")))?;
        let load = |bytes: &[u8], origin: &str| {
            runtime
                .load(
                    name,
                    bytes,
                    PluginSettings::default(),
                    Some(World::IpamStrategy),
                )
                .map_err(|error| failed(format!("strategy plugin {name} from {origin}: {error}")))
        };

        let exact = self.plugins_dir.join(format!("{name}.wasm"));
        if let Some(bytes) = read_if_present(&exact)? {
            return load(&bytes, &exact.display().to_string());
        }
        let mut mismatch = String::new();
        let cargo_named = self
            .plugins_dir
            .join(format!("{}.wasm", name.replace('-', "_")));
        if cargo_named != exact
            && let Some(bytes) = read_if_present(&cargo_named)?
        {
            let plugin = load(&bytes, &cargo_named.display().to_string())?;
            if plugin.info.name == name {
                return Ok(plugin);
            }
            mismatch = format!(
                "; {} is plugin {}, not {name}",
                cargo_named.display(),
                plugin.info.name
            );
        }
        if let Some((_, bytes)) = crate::builtin::BUILTIN_PLUGINS
            .iter()
            .find(|(builtin, _)| *builtin == name)
        {
            return load(bytes, "the built-in plugins");
        }
        let builtins: Vec<&str> = crate::builtin::BUILTIN_PLUGINS
            .iter()
            .map(|(builtin, _)| *builtin)
            .collect();
        Err(failed(format!(
            "no strategy plugin {name}: no {} and none built in (built in: {}){mismatch}",
            exact.display(),
            builtins.join(", ")
        )))
    }
}

impl StrategySource for StrategyLoader {
    fn strategy(&self, name: &str) -> Result<Arc<Plugin>, String> {
        self.load(name).map(Arc::new).map_err(|error| error.msg)
    }
}

fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, CniError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(CniError::io(
            format_args!("reading {}", path.display()),
            error,
        )),
    }
}

/// The configured cache directory if it can be made private to this user
/// (a plugin run as another user, a read-only /var, a directory someone else
/// made), else one in the temp directory; with neither, plugins compile in
/// memory on every invocation. Loading a cache runs its native code, so a
/// directory that fails is never used (see `runtime::private_cache_dir`).
fn usable_cache_dir(configured: &Path) -> Option<PathBuf> {
    let fallback = std::env::temp_dir().join(FALLBACK_CACHE);
    let mut refusals = Vec::new();
    for dir in [configured, &fallback] {
        match private_cache_dir(dir) {
            Ok(dir) => return Some(dir),
            Err(why) => refusals.push(why),
        }
    }
    tracing::warn!(
        "compiling in memory, no safe cache directory: {}",
        refusals.join("; ")
    );
    None
}
