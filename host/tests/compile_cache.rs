//! The compile cache runs the native code it loads, so it must never load
//! what another user could have written. These tests plant files the way an
//! unprivileged user on a node could, and check that knit-ipam (run as root
//! by the container runtime) and the controller's runtime refuse them and
//! still serve by compiling.
//!
//! They need root, as `tests/run` has: files are handed to another user
//! (65534, `nobody`) with `chown`.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use knit::runtime::{PluginSettings, Runtime, RuntimeConfig, RuntimeMetrics};
use serde_json::json;
use sha2::{Digest, Sha256};

const NOBODY: u32 = 65534;

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests hand files to another user: run them as root (tests/run does)"
    );
}

/// An ADD as a container runtime makes it, with `TMPDIR` set; returns
/// whether it succeeded and what it wrote to stderr.
fn add(cache_dir: &Path, data_dir: &Path, tmpdir: &Path) -> (bool, String) {
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "net",
        "type": "bridge",
        "ipam": {
            "type": "knit-ipam",
            "subnet": "10.9.0.0/24",
            "dataDir": data_dir,
            "cacheDir": cache_dir,
            "pluginsDir": tmpdir.join("no-plugins"),
        }
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_knit-ipam"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", "/var/run/netns/c1")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("TMPDIR", tmpdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stderr)
}

/// The one cached file in `dir`.
fn cached_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// A cached file as an attacker would plant it: the compiled code of the
/// real plugin with its machine code replaced by `int3` (so running it kills
/// the process with SIGTRAP), under a freshly computed content digest, so
/// only the cache's ownership rules stand in the way.
fn poisoned(cached: &[u8]) -> Vec<u8> {
    let mut elf = cached[32..].to_vec();
    let (offset, size) = text_section(&elf);
    elf[offset..offset + size].fill(0xcc);
    let mut planted = Sha256::digest(&elf).to_vec();
    planted.extend_from_slice(&elf);
    planted
}

/// Offset and size of the ELF64 `.text` section.
fn text_section(elf: &[u8]) -> (usize, usize) {
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..4], b"\x7fELF");
    let (table, entry, count, names) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let section = |i: usize| table + i * entry;
    let strings = u64_at(section(names) + 24);
    (0..count)
        .find_map(|i| {
            let name_at = strings + u32_at(section(i));
            let name = &elf[name_at..name_at + 6];
            (name == b".text\0").then(|| (u64_at(section(i) + 24), u64_at(section(i) + 32)))
        })
        .expect("a .text section")
}

#[test]
fn knit_ipam_refuses_a_cache_directory_another_user_made() {
    require_root();
    let root = tempfile::tempdir().unwrap();
    // A real cached build to poison, from a cache of our own.
    let ours = root.path().join("ours");
    let (ok, stderr) = add(&ours, &root.path().join("data-1"), root.path());
    assert!(ok, "{stderr}");
    let real = cached_file(&ours);

    // The attack: before knit-ipam ever ran, an unprivileged user made the
    // temp-directory fallback, open to everyone, and planted a build there.
    let fallback = root.path().join("knit-ipam-cache");
    std::fs::create_dir(&fallback).unwrap();
    std::fs::set_permissions(&fallback, std::fs::Permissions::from_mode(0o777)).unwrap();
    chown(&fallback, Some(NOBODY), Some(NOBODY)).unwrap();
    let planted = fallback.join(real.file_name().unwrap());
    let poison = poisoned(&std::fs::read(&real).unwrap());
    std::fs::write(&planted, &poison).unwrap();
    chown(&planted, Some(NOBODY), Some(NOBODY)).unwrap();

    // The configured cache cannot be made, so the fallback is considered.
    let (ok, stderr) = add(
        Path::new("/proc/knit-ipam-cache"),
        &root.path().join("data-2"),
        root.path(),
    );
    assert!(ok, "the ADD must succeed by compiling in memory: {stderr}");
    assert!(
        stderr.contains("owned by uid 65534"),
        "the refusal says why: {stderr}"
    );
    assert_eq!(
        std::fs::read(&planted).unwrap(),
        poison,
        "the planted file is left alone"
    );
    assert_eq!(
        std::fs::read_dir(&fallback).unwrap().count(),
        1,
        "nothing is written into another user's directory"
    );
}

#[test]
fn a_cached_file_whose_digest_does_not_match_is_compiled_again() {
    require_root();
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let (ok, stderr) = add(&cache, &root.path().join("data-1"), root.path());
    assert!(ok, "{stderr}");
    let file = cached_file(&cache);
    let real = std::fs::read(&file).unwrap();
    // The code poisoned but the old digest kept: a damaged or tampered file.
    let mut damaged = poisoned(&real);
    damaged[..32].copy_from_slice(&real[..32]);
    std::fs::write(&file, &damaged).unwrap();

    let (ok, stderr) = add(&cache, &root.path().join("data-2"), root.path());
    assert!(ok, "{stderr}");
    assert!(stderr.contains("does not match its digest"), "{stderr}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        real,
        "replaced by a fresh build"
    );
}

fn runtime(cache_dir: &Path) -> Arc<Runtime> {
    Runtime::new(
        RuntimeConfig {
            cache_dir: Some(cache_dir.to_path_buf()),
            ..RuntimeConfig::default()
        },
        Arc::new(RuntimeMetrics::default()),
    )
    .unwrap()
}

fn load_sequential(runtime: &Runtime) {
    let (_, bytes) = knit::builtin::BUILTIN_PLUGINS
        .iter()
        .find(|(name, _)| *name == "ipam-sequential")
        .unwrap();
    runtime
        .load("ipam-sequential", bytes, PluginSettings::default(), None)
        .unwrap();
}

#[test]
fn the_controller_caches_in_a_private_directory_of_its_own() {
    require_root();
    let root = tempfile::tempdir().unwrap();

    // Another user's directory: not used, plugins compile in memory.
    let foreign = root.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    chown(&foreign, Some(NOBODY), Some(NOBODY)).unwrap();
    load_sequential(&runtime(&foreign));
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 0);

    // A shared directory of root's, as a Kubernetes emptyDir is (0777): the
    // cache goes into a private directory made inside it.
    let shared = root.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    load_sequential(&runtime(&shared));
    let own = shared.join(format!("knit-{}", rustix::process::geteuid().as_raw()));
    let mode = std::fs::metadata(&own).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let file = cached_file(&own);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
