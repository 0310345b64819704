//! Precompiled components on disk, keyed by the component's sha256 and the
//! engine's compatibility hash, so a restart or a one-shot `knit-ipam` call
//! maps native code instead of compiling again.

use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompileCache {
    pub fn new(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = Sha256Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..8]);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            engine_key,
        })
    }

    /// The cached native code for `bytes`, compiling and storing it first when
    /// there is none (or what is there cannot be used).
    pub fn component(
        &self,
        engine: &Engine,
        digest_hex: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<Component> {
        let path = self
            .dir
            .join(format!("{digest_hex}-{}.cwasm", self.engine_key));
        if path.exists() {
            // SAFETY: the file was written by `store` below from our own
            // compilation, under a name that binds it to these exact bytes and
            // this engine configuration; wasmtime also checks its header.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok(component),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "discarding unusable cached plugin");
                }
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        if let Err(error) = store(&path, &compiled) {
            tracing::warn!(path = %path.display(), %error, "cannot cache compiled plugin");
        }
        // SAFETY: these bytes came from `precompile_component` just above.
        unsafe { Component::deserialize(engine, &compiled) }
    }
}

/// Writes then renames, so a reader never maps a half-written file and two
/// processes compiling the same plugin at once both end with a whole file.
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile_in(dir)?;
    file.1.write_all(bytes)?;
    file.1.sync_all()?;
    std::fs::rename(&file.0, path)
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}

/// Feeds std's `Hash` into sha256, so the key is stable across runs (std's
/// default hasher is randomly seeded).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
