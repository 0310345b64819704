//! The `ipam-random` plugin: the logic lives in `knit-ipam-core`, where it is
//! unit-tested natively; this crate only exports it as a component.
#[cfg(target_arch = "wasm32")]
knit_ipam_core::ipam_plugin!(knit_ipam_core::Strategy::Random);
