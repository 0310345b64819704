//! The plugins directory as a plugin source: every `<name>.wasm` in it serves
//! as plugin `<name>`, reloaded when it changes.
//!
//! Rather than interpreting each filesystem event (editors write temp files
//! and rename, Kubernetes swaps a ConfigMap volume by re-pointing the `..data`
//! symlink), any event that can change content (a create, a write, a rename,
//! a removal) starts a short quiet period after which the directory is
//! rescanned and compared with what is loaded. Unchanged files cost a hash.
//! Reads and metadata changes are ignored: the rescan reads every file, and
//! counting its own reads as changes made it rescan forever.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{PluginSettings, PluginSource, Registry, digest_of};

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
            // The file's name becomes the plugin's, in logs, metrics and status.
            match super::plugin::plugin_name(name.to_string()) {
                Ok(name) => {
                    found.insert(name, path);
                }
                Err(why) => {
                    tracing::warn!("skipping {file_name:?} in the plugins directory: {why}")
                }
            }
        }
    }
    Ok(found)
}

/// Brings the registry in line with the directory: loads new and changed
/// files, forgets vanished ones. Blocking. Returns how many files failed.
pub fn sync(registry: &Registry, dir: &Path, settings: &PluginSettings) -> usize {
    sync_remembering(registry, dir, settings, &mut Rejected::new())
}

/// The digest of the bytes last refused at each path: bytes that failed once
/// fail again, so they are not compiled (and warned about) on every rescan.
type Rejected = HashMap<PathBuf, String>;

fn sync_remembering(
    registry: &Registry,
    dir: &Path,
    settings: &PluginSettings,
    rejected: &mut Rejected,
) -> usize {
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
        let digest = digest_of(&bytes);
        if rejected.get(path) == Some(&digest) {
            failures += 1;
            continue;
        }
        match registry.load(source, name, &bytes, settings.clone(), None) {
            Ok(_) => {
                rejected.remove(path);
            }
            Err(_) => {
                rejected.insert(path.clone(), digest);
                failures += 1;
            }
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
        // Only the fact that content may have changed matters; see the module
        // doc. An error (say, a lost event) may hide a change: rescan.
        let rescan = match &event {
            Ok(event) => may_change_content(&event.kind),
            Err(_) => true,
        };
        if rescan {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let rescan = move |mut rejected: Rejected| {
        let (registry, dir, settings) = (registry.clone(), dir.clone(), settings.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                sync_remembering(&registry, &dir, &settings, &mut rejected);
                rejected
            })
            .await
            .unwrap_or_default()
        }
    };
    let mut rejected = rescan(Rejected::new()).await;
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
            rejected = rescan(rejected).await;
        }
    });
    Ok(DirectoryWatch {
        _watcher: watcher,
        task,
    })
}

/// Whether an event of this kind can change what the directory serves.
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        // Unknown to notify: be safe and rescan.
        EventKind::Any | EventKind::Other => true,
    }
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
