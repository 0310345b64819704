//! Hot swap through the plugins directory while calls run in a loop.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use knit::runtime::{CallError, PluginSettings, Registry, dir_source};
use knit_ipam_core::Request;

fn request() -> Request {
    Request {
        size: 256,
        excluded: vec![0..=0, 255..=255],
        count: 1,
        ..Request::default()
    }
}

/// Writes a file the way careful tools do: to a temp name, then rename.
fn write_atomically(path: &Path, bytes: &[u8]) {
    let temp = path.with_extension("tmp-swap");
    std::fs::write(&temp, bytes).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// Polls until `name` serves `version`.
async fn wait_for_version(registry: &Registry, name: &str, version: &str) -> Duration {
    let started = Instant::now();
    loop {
        if registry.get(name).is_ok_and(|p| p.info.version == version) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{name} never reached {version}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last_version: Arc<std::sync::Mutex<String>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Threads calling `name` in a loop, counting results.
fn start_load(registry: &Arc<Registry>, name: &'static str, threads: usize) -> Load {
    let load = Load {
        stop: Arc::default(),
        ok: Arc::default(),
        failed: Arc::default(),
        last_version: Arc::default(),
        threads: Vec::new(),
    };
    let handles = (0..threads)
        .map(|_| {
            let (registry, stop, ok, failed, last) = (
                registry.clone(),
                load.stop.clone(),
                load.ok.clone(),
                load.failed.clone(),
                load.last_version.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let result = registry
                        .get(name)
                        .and_then(|p| p.allocate(&request(), &[]).map(|r| (p, r)));
                    match result {
                        Ok((plugin, Ok(_))) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            *last.lock().unwrap() = plugin.info.version.clone();
                        }
                        Ok((_, Err(error))) => panic!("strategy error: {error}"),
                        Err(error) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("call failed: {error}");
                        }
                    }
                }
            })
        })
        .collect();
    Load {
        threads: handles,
        ..load
    }
}

impl Load {
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_under_load_without_failed_calls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("swap.wasm");
    let (v1, v2) = (
        common::built_plugin("fixture_swap_v1"),
        common::built_plugin("fixture_swap_v2"),
    );
    std::fs::write(&path, &v1).unwrap();
    let registry = common::registry();
    let mut events = registry.subscribe();
    let _watch = dir_source::watch(
        registry.clone(),
        dir.path().to_path_buf(),
        PluginSettings::default(),
    )
    .await
    .unwrap();
    assert_eq!(registry.get("swap").unwrap().info.version, "1.0.0");

    let load = start_load(&registry, "swap", 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    write_atomically(&path, &v2);
    let took = wait_for_version(&registry, "swap", "2.0.0").await;
    eprintln!("new version serving {took:?} after the rename");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*load.last_version.lock().unwrap(), "2.0.0");

    // A broken version, written in place (not atomically): rejected, the
    // previous one keeps serving.
    std::fs::write(&path, b"\0asm\x0d\0\x01\0 truncated").unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            knit::runtime::PluginEvent::Rejected { name, error, .. } => {
                assert_eq!(name, "swap");
                assert!(
                    error.contains("not a valid WebAssembly component"),
                    "{error}"
                );
                break;
            }
            _ => continue,
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(registry.get("swap").unwrap().info.version, "2.0.0");
    let (ok, failed) = load.stop();
    assert_eq!(failed, 0, "calls failed during the swap");
    assert!(ok > 100, "only {ok} calls ran");

    // Deleting the file removes the plugin; calls get a clear error, nothing
    // crashes, and putting it back serves again.
    std::fs::remove_file(&path).unwrap();
    let started = Instant::now();
    while registry.get("swap").is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "deleted plugin still served"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(registry.get("swap"), Err(CallError::NotFound(_))));
    write_atomically(&path, &v1);
    wait_for_version(&registry, "swap", "1.0.0").await;
}

/// Kubernetes updates a ConfigMap volume by writing a new timestamped
/// directory and re-pointing the `..data` symlink; the visible files are
/// symlinks through `..data`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_volume_symlink_swap() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let publish = |generation: &str, bytes: &[u8]| {
        let data_dir = root.join(format!("..{generation}"));
        std::fs::create_dir(&data_dir).unwrap();
        std::fs::write(data_dir.join("swap.wasm"), bytes).unwrap();
        symlink(format!("..{generation}"), root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    };
    publish(
        "2026_11_21_00_00_00.1",
        &common::built_plugin("fixture_swap_v1"),
    );
    symlink("..data/swap.wasm", root.join("swap.wasm")).unwrap();

    let registry = common::registry();
    let _watch = dir_source::watch(
        registry.clone(),
        root.to_path_buf(),
        PluginSettings::default(),
    )
    .await
    .unwrap();
    assert_eq!(registry.get("swap").unwrap().info.version, "1.0.0");
    let load = start_load(&registry, "swap", 1);

    publish(
        "2026_11_21_00_01_00.2",
        &common::built_plugin("fixture_swap_v2"),
    );
    std::fs::remove_dir_all(root.join("..2026_11_21_00_00_00.1")).unwrap();
    let took = wait_for_version(&registry, "swap", "2.0.0").await;
    eprintln!("new version serving {took:?} after the symlink swap");
    let (_, failed) = load.stop();
    assert_eq!(failed, 0);
    assert_eq!(
        registry.serving().len(),
        1,
        "hidden entries must not load as plugins"
    );
}

/// A directory nobody touches costs nothing: the rescan's own reads are not
/// changes, and a file that failed is not compiled again until it changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_directory_is_not_rescanned() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("swap.wasm"),
        common::built_plugin("fixture_swap_v1"),
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"not a component").unwrap();
    let registry = common::registry();
    let metrics = registry.runtime().metrics().clone();
    let _watch = dir_source::watch(
        registry.clone(),
        dir.path().to_path_buf(),
        PluginSettings::default(),
    )
    .await
    .unwrap();
    let counts = || {
        (
            metrics.reloads_of("swap", "unchanged") + metrics.reloads_of("swap", "loaded"),
            metrics.reloads_of("broken", "rejected"),
        )
    };
    assert_eq!(counts(), (1, 1), "the first scan loads and rejects once");

    // Ten debounce periods of quiet: a watcher woken by its own reads
    // rescans about ten times in this time.
    tokio::time::sleep(dir_source::DEBOUNCE * 10).await;
    assert_eq!(counts(), (1, 1), "an idle directory was rescanned");

    // A real change is still seen, and the broken file is not retried.
    write_atomically(
        &dir.path().join("swap.wasm"),
        &common::built_plugin("fixture_swap_v2"),
    );
    wait_for_version(&registry, "swap", "2.0.0").await;
    tokio::time::sleep(dir_source::DEBOUNCE * 3).await;
    assert_eq!(metrics.reloads_of("broken", "rejected"), 1);
}
