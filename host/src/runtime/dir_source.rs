//! The plugins directory as a plugin source: every `<name>.wasm` in it serves
//! as plugin `<name>`, reloaded when it changes.
//!
//! Rather than interpreting each filesystem event (editors write temp files
//! and rename, Kubernetes swaps a ConfigMap volume by re-pointing the `..data`
//! symlink), any event starts a short quiet period after which the directory
//! is rescanned and compared with what is loaded. Unchanged files cost a hash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{PluginSettings, PluginSource, Registry};

/// Quiet time after the last event before rescanning.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// The `.wasm` files of `dir` by plugin name, symlinks followed. Hidden
/// entries (`..data`, editor swap files) are skipped.
pub fn scan(dir: &Path) -> std::io::Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        if let Some(name) = file_name.strip_suffix(".wasm")
            && path.is_file()
        {
            found.insert(name.to_string(), path);
        }
    }
    Ok(found)
}

/// Brings the registry in line with the directory: loads new and changed
/// files, forgets vanished ones. Blocking. Returns how many files failed.
pub fn sync(registry: &Registry, dir: &Path, settings: &PluginSettings) -> usize {
    let files = match scan(dir) {
        Ok(files) => files,
        Err(error) => {
            tracing::error!(dir = %dir.display(), %error, "cannot read the plugins directory");
            return 1;
        }
    };
    let mut failures = 0;
    for (name, path) in &files {
        let source = PluginSource::Directory(path.clone());
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            // Vanished between the scan and the read: the next event rescans.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read plugin");
                failures += 1;
                continue;
            }
        };
        if registry
            .load(source, name, &bytes, settings.clone(), None)
            .is_err()
        {
            failures += 1;
        }
    }
    let in_dir = |source: &PluginSource| matches!(source, PluginSource::Directory(path) if path.parent() == Some(dir));
    for (name, source) in registry.names_from(in_dir) {
        if files
            .get(&name)
            .is_none_or(|path| PluginSource::Directory(path.clone()) != source)
        {
            registry.remove(&source, &name);
        }
    }
    failures
}

/// Loads the directory now, then keeps following it until the returned
/// handle is dropped.
pub async fn watch(
    registry: Arc<Registry>,
    dir: PathBuf,
    settings: PluginSettings,
) -> notify::Result<DirectoryWatch> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only the fact that something happened matters; see the module doc.
        let _ = tx.send(event.is_ok());
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let initial = (registry.clone(), dir.clone(), settings.clone());
    let _ = tokio::task::spawn_blocking(move || sync(&initial.0, &initial.1, &initial.2)).await;
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until no event arrived for DEBOUNCE.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            let (registry, dir, settings) = (registry.clone(), dir.clone(), settings.clone());
            let _ = tokio::task::spawn_blocking(move || sync(&registry, &dir, &settings)).await;
        }
    });
    Ok(DirectoryWatch {
        _watcher: watcher,
        task,
    })
}

/// Stops watching when dropped.
pub struct DirectoryWatch {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DirectoryWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
