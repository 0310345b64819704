//! Builds the plugins in `plugins/` for wasm32-wasip2 and embeds them, so the
//! `knit` binary carries its default plugins (a plugins directory or `Plugin`
//! objects override them by name).

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("plugins").display()
    );
    println!("cargo:rerun-if-changed={}", workspace.join("wit").display());

    // The CNI plugins run once per container start: as position-dependent
    // executables they skip ~50,000 start-up relocations, which is what puts
    // knit-ipam on par with host-local (see `cargo bench --bench cni`).
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        for plugin in ["knit-ipam", "headcni", "headcni-ipam"] {
            println!("cargo:rustc-link-arg-bin={plugin}=-no-pie");
        }
    }

    let plugins = plugin_crates(&workspace.join("plugins"));
    ensure_target_installed();
    // A fixed directory beside the outer build, so check, build and test
    // share one plugin build instead of each doing their own.
    let plugin_target = out_dir
        .ancestors()
        .nth(4)
        .map(|target| target.join("knit-builtin-plugins"))
        .unwrap_or_else(|| out_dir.join("plugins"));
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args([
            "build",
            "--profile",
            "plugin",
            "--target",
            TARGET,
            "--manifest-path",
        ])
        .arg(workspace.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &plugin_target);
    for (package, _) in &plugins {
        cargo.args(["-p", package]);
    }
    // The outer build's flags and wrappers (clippy, coverage) are for the host.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
    ] {
        cargo.env_remove(var);
    }
    let status = cargo.status().expect("running cargo to build the plugins");
    assert!(status.success(), "building the built-in plugins failed");

    let mut table = String::from(
        "/// Plugins compiled into the binary: (name, component bytes).\npub const BUILTIN_PLUGINS: &[(&str, &[u8])] = &[\n",
    );
    for (package, lib) in &plugins {
        let wasm = plugin_target
            .join(TARGET)
            .join("plugin")
            .join(format!("{lib}.wasm"));
        table.push_str(&format!(
            "    ({package:?}, include_bytes!({:?})),\n",
            wasm.display().to_string()
        ));
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("builtin_plugins.rs"), table).unwrap();
}

/// `(package, library file stem)` of every plugin crate (a `cdylib`).
fn plugin_crates(dir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        if !text.contains("cdylib") {
            continue;
        }
        let package = text
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .map(|n| n.trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("no package name in {}", manifest.display()));
        let lib = package.replace('-', "_");
        found.push((package, lib));
    }
    found.sort();
    found
}

/// One command should be enough on a fresh machine: add the wasm target when
/// rustup manages the toolchain and it is missing.
fn ensure_target_installed() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(true);
    if !installed {
        println!("cargo:warning=installing the {TARGET} target with rustup to build the plugins");
        let status = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "rustup target add {TARGET} failed"
        );
    }
}
