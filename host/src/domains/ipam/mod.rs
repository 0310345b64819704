//! IPAM: `IPPool` and `IPAllocation`, strategies as plugins.

pub mod address_space;
pub mod claim;
pub mod controller;
pub mod expectations;
pub mod metrics;
pub mod plan;
pub mod types;
