//! Precompiled components on disk, keyed by the component's sha256 and the
//! engine's compatibility hash, so a restart or a one-shot `knit-ipam` call
//! loads native code instead of compiling again.
//!
//! Loading a cached file runs its native code, so a file someone else could
//! write is a code-execution hole (knit-ipam runs as root on every node).
//! The cache therefore trusts nothing but one directory, opened once and
//! checked by its descriptor: owned by this user and writable by nobody
//! else. Every file is opened relative to that descriptor without following
//! links, must itself be ours and private, and starts with the sha256 of the
//! rest, checked before the rest is used. Because nothing is looked up by
//! path after the directory is opened, a parent directory that is renamed or
//! replaced afterwards changes nothing; a directory that fails the checks is
//! not used, and plugins compile in memory.

use std::hash::Hasher;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Bytes of the content digest that starts every cached file.
const DIGEST_LEN: usize = 32;

pub struct CompileCache {
    dir: OwnedFd,
    path: PathBuf,
    engine_key: String,
}

impl CompileCache {
    /// The cache in `dir` (see `private_dir`), or why it cannot be used.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self, String> {
        let path = private_dir(dir)?;
        let dir = open_private_dir(&path)?;
        let mut hasher = Sha256Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..8]);
        Ok(CompileCache {
            dir,
            path,
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
        // `-v2`: files from before the digest header have the plain name and
        // are never read (nor warned about) again.
        let name = format!("{digest_hex}-{}-v2.cwasm", self.engine_key);
        if let Some(compiled) = self.read_verified(&name) {
            // SAFETY: the file is in a directory only this user can write, is
            // ours and private, and its content matches the digest `store`
            // wrote with our own compilation; wasmtime also checks its header.
            match unsafe { Component::deserialize(engine, &compiled) } {
                Ok(component) => return Ok(component),
                Err(error) => {
                    tracing::warn!(path = %self.path.join(&name).display(), %error, "discarding unusable cached plugin");
                }
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        if let Err(error) = self.store(&name, &compiled) {
            tracing::warn!(path = %self.path.join(&name).display(), %error, "cannot cache compiled plugin");
        }
        // SAFETY: these bytes came from `precompile_component` just above.
        unsafe { Component::deserialize(engine, &compiled) }
    }

    /// The compiled bytes of cache file `name` if it exists, is a private
    /// file of ours, and its digest matches; a file that fails is reported.
    fn read_verified(&self, name: &str) -> Option<Vec<u8>> {
        let refuse = |why: String| {
            tracing::warn!(path = %self.path.join(name).display(), "refusing cached plugin: {why}");
            None
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(&self.dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return None,
            Err(error) => return refuse(format!("cannot open it: {error}")),
        };
        let stat = match rustix::fs::fstat(&fd) {
            Ok(stat) => stat,
            Err(error) => return refuse(format!("cannot stat it: {error}")),
        };
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return refuse("not a regular file".into());
        }
        if let Err(why) = private(stat.st_uid, stat.st_mode) {
            return refuse(why);
        }
        let mut content = Vec::new();
        if let Err(error) = std::fs::File::from(fd).read_to_end(&mut content) {
            return refuse(format!("cannot read it: {error}"));
        }
        if content.len() < DIGEST_LEN
            || Sha256::digest(&content[DIGEST_LEN..]).as_slice() != &content[..DIGEST_LEN]
        {
            return refuse("its content does not match its digest".into());
        }
        content.drain(..DIGEST_LEN);
        Some(content)
    }

    /// Writes a new private file (never through a link or over another
    /// file), then renames it into place, so a reader never sees a half
    /// file and two processes compiling the same plugin both end with a
    /// whole one.
    fn store(&self, name: &str, compiled: &[u8]) -> std::io::Result<()> {
        let temp = format!(".tmp-{}-{:016x}", std::process::id(), rand::random::<u64>());
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.dir, &temp, flags, Mode::from_raw_mode(0o600))?;
        let written = (|| {
            let mut file = std::fs::File::from(fd);
            file.write_all(&Sha256::digest(compiled))?;
            file.write_all(compiled)?;
            file.sync_all()?;
            rustix::fs::renameat(&self.dir, &temp, &self.dir, name)?;
            Ok(())
        })();
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&self.dir, &temp, AtFlags::empty());
        }
        written
    }
}

/// The directory under `dir` that a compile cache may use: `dir` itself when
/// it is this user's and private; else, when `dir` is root's or ours but
/// shared (a Kubernetes `emptyDir` is root's and mode 0777), a private
/// `knit-<uid>` made inside it. A directory another user owns is not used at
/// all. Creates what is missing with mode 0700.
pub fn private_dir(dir: &Path) -> Result<PathBuf, String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let why_not = match open_private_dir(dir) {
        Ok(_) => return Ok(dir.to_path_buf()),
        Err(why) => why,
    };
    let owner = rustix::fs::stat(dir)
        .map_err(|error| format!("cannot stat {}: {error}", dir.display()))?
        .st_uid;
    if owner != 0 && owner != rustix::process::geteuid().as_raw() {
        return Err(why_not);
    }
    let own = dir.join(format!("knit-{}", rustix::process::geteuid().as_raw()));
    match std::fs::DirBuilder::new().mode(0o700).create(&own) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => {
            return Err(format!(
                "{why_not}, and cannot create {}: {error}",
                own.display()
            ));
        }
    }
    open_private_dir(&own)
        .map(|_| own)
        .map_err(|why| format!("{why_not}; {why}"))
}

/// Opens `path` as a directory (not through a final symlink) and checks, by
/// the descriptor, that it is ours and private.
fn open_private_dir(path: &Path) -> Result<OwnedFd, String> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty())
        .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    let stat = rustix::fs::fstat(&fd)
        .map_err(|error| format!("cannot stat {}: {error}", path.display()))?;
    private(stat.st_uid, stat.st_mode).map_err(|why| format!("{} {why}", path.display()))?;
    Ok(fd)
}

/// Owned by this process's user and writable by no one else.
fn private(uid: u32, mode: u32) -> Result<(), String> {
    let me = rustix::process::geteuid().as_raw();
    if uid != me {
        return Err(format!(
            "is owned by uid {uid}, not by this process's uid {me}"
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "is writable by group or others (mode {:04o})",
            mode & 0o7777
        ));
    }
    Ok(())
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
