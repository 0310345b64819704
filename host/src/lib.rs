//! knit: a Kubernetes controller for edge networking whose decisions are
//! WebAssembly components. The README's Layout section is the map.

pub mod bench_fixtures;
pub mod cli;
pub mod cni;
pub mod conditions;
pub mod controller;
pub mod crds;
pub mod domains;
pub mod headcni;
pub mod leader;
pub mod plugin_test;
pub mod providers;
pub mod registry_setup;
pub mod runtime;
pub mod simulate;
pub mod telemetry;

/// The plugins shipped inside the binary.
pub mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
}

/// What `knit simulate` plans when given no manifests.
pub const DEFAULT_EXAMPLE: &str = include_str!("../../examples/ipam/pool-and-pods.yaml");
