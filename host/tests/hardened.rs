//! The binary as the container image runs it: as a non-root user, on a
//! read-only root filesystem, with only its plugin cache writable. There is
//! no container engine here, so the same conditions are made by hand: a
//! private mount namespace in which `/` is remounted read-only and the
//! cache directory is the one writable bind mount, then `setpriv` to UID
//! 65532.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn readable(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn runs_as_non_root_on_a_read_only_root_with_only_its_cache_writable() {
    // Where UID 65532 can read: the binary and a manifest, in a directory
    // of their own.
    let dir = tempfile::tempdir().unwrap();
    readable(dir.path(), 0o755);
    let bin = dir.path().join("knit");
    std::fs::copy(env!("CARGO_BIN_EXE_knit"), &bin).unwrap();
    readable(&bin, 0o755);
    let manifest = dir.path().join("pool.yaml");
    std::fs::write(&manifest, knit::DEFAULT_EXAMPLE).unwrap();
    readable(&manifest, 0o644);
    // Writable by UID 65532 without a chown, so the test needs privilege
    // only for the mount namespace, and cleans up after itself.
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    readable(&cache, 0o777);

    let (dir_s, bin_s, manifest_s, cache_s) = (
        dir.path().display().to_string(),
        bin.display().to_string(),
        manifest.display().to_string(),
        cache.display().to_string(),
    );
    let script = format!(
        "mount --bind {cache_s} {cache_s} && mount -o remount,bind,ro / && \
         if touch {dir_s}/probe 2>/dev/null; then echo 'the root is writable' >&2; exit 3; fi && \
         exec setpriv --reuid 65532 --regid 65532 --clear-groups --inh-caps=-all \
           {bin_s} simulate -f {manifest_s} --plugin-cache {cache_s}"
    );
    // Mount namespaces need root: as the test command's package step does,
    // use sudo when not root.
    let mut command = if rustix::process::geteuid().is_root() {
        Command::new("unshare")
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["-n", "unshare"]);
        sudo
    };
    let output = command
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("running unshare");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("10.44.0.10"), "{stdout}\n{stderr}");
    // It compiled its plugins into the one place it may write.
    let cached = std::fs::read_dir(&cache).unwrap().count();
    assert!(cached > 0, "nothing in the plugin cache\n{stderr}");
    assert!(!dir.path().join("probe").exists());
}
