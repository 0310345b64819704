use std::fmt;
use std::time::Duration;

/// Which plugin a message is about: name, version and digest, so an operator
/// can tell exactly which build misbehaved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginRef {
    pub name: String,
    pub version: String,
    pub digest: String,
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self.digest.get(..19).unwrap_or(&self.digest);
        if self.version.is_empty() {
            write!(f, "{} ({short})", self.name)
        } else {
            write!(f, "{}@{} ({short})", self.name, self.version)
        }
    }
}

/// A call that did not produce an answer the host can use. The host keeps
/// running; the object being reconciled gets this as its error.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no plugin named {0:?} is loaded")]
    NotFound(String),
    #[error("plugin {plugin} implements the {actual} world, not {wanted}")]
    WrongWorld {
        plugin: PluginRef,
        actual: &'static str,
        wanted: &'static str,
    },
    #[error("plugin {plugin} ran past its deadline of {deadline:?}")]
    Deadline {
        plugin: PluginRef,
        deadline: Duration,
    },
    #[error("plugin {plugin} hit its memory limit of {limit_bytes} bytes")]
    MemoryLimit {
        plugin: PluginRef,
        limit_bytes: usize,
    },
    #[error("plugin {plugin} trapped: {message}")]
    Trap { plugin: PluginRef, message: String },
    #[error("plugin {plugin} could not be instantiated: {message}")]
    Instantiate { plugin: PluginRef, message: String },
    #[error("plugin {plugin} returned more than the {limit_bytes} bytes one answer may take")]
    OutputBudget {
        plugin: PluginRef,
        limit_bytes: usize,
    },
    #[error("plugin {plugin} returned an answer the host refuses: {reason}")]
    BadOutput { plugin: PluginRef, reason: String },
}

impl CallError {
    /// The label used for this error in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::NotFound(_) => "not_found",
            CallError::WrongWorld { .. } => "wrong_world",
            CallError::Deadline { .. } => "deadline",
            CallError::MemoryLimit { .. } => "memory_limit",
            CallError::Trap { .. } => "trap",
            CallError::Instantiate { .. } => "instantiate",
            CallError::OutputBudget { .. } => "output_budget",
            CallError::BadOutput { .. } => "bad_output",
        }
    }
}

/// Why a plugin was not loaded. The previous version, if any, keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    #[error("{0}")]
    WrongWorld(String),
    #[error("plugin built against {found}; this host speaks {PACKAGE}@{PACKAGE_VERSION}", PACKAGE = super::bindings::PACKAGE, PACKAGE_VERSION = super::bindings::PACKAGE_VERSION)]
    IncompatibleVersion { found: String },
    #[error("cannot link: {0}")]
    Link(String),
    #[error("describe() failed: {0}")]
    Describe(CallError),
    #[error("invalid limits: {0}")]
    Limits(String),
    #[error("plugin name {name:?} is already provided by {owner}")]
    NameTaken { name: String, owner: String },
}
