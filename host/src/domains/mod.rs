//! One folder per domain: its kinds, its pure planning, and (as each domain
//! lands) its controller.

pub mod ipam;
pub mod tke_clb;
