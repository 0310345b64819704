//! The `tunnel-mapper` plugin: the logic lives in `knit-tunnel-core`, where it
//! is unit-tested natively; this crate only exports it as a component.
#[cfg(target_arch = "wasm32")]
knit_tunnel_core::tunnel_plugin!();
