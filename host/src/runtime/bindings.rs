//! Host-side bindings of the WIT worlds in `wit/`: one `bindgen!` per world,
//! sharing the interfaces every world has.

pub mod ipam_strategy {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "ipam-strategy",
    });
}

pub mod clb_allocator {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "clb-allocator",
        // One `host` implementation and one `config-entry` type for every world.
        with: {
            "knit:plugin/types": super::types,
            "knit:plugin/host": super::host,
        },
    });
}

pub mod tunnel_mapper {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "tunnel-mapper",
        with: {
            "knit:plugin/types": super::types,
            "knit:plugin/host": super::host,
        },
    });
}

pub use ipam_strategy::knit::plugin::{host, types};

/// The WIT package this host speaks; a plugin built against an incompatible
/// version of it is rejected at load.
pub const PACKAGE: &str = "knit:plugin";
pub const PACKAGE_VERSION: &str = "0.1.0";
