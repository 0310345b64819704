//! The `clb-allocator` plugin: the logic lives in `knit-clb-core`, where it
//! is unit-tested natively; this crate only exports it as a component.
#[cfg(target_arch = "wasm32")]
knit_clb_core::clb_plugin!();
