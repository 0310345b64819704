//! One folder per domain: its kinds, its pure plan and its controllers,
//! each observe → plan → act on the kit in `crate::controller`.

pub mod cloudflare;
pub mod ipam;
pub mod tke_clb;
