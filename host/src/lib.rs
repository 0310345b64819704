//! knit: a Kubernetes controller for edge networking whose decisions are
//! WebAssembly components. See DESIGN.md in the repository for the map.

pub mod runtime;

/// The plugins shipped inside the binary.
pub mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
}
