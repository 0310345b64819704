//! knit: a Kubernetes controller for edge networking whose decisions are
//! WebAssembly components. See DESIGN.md in the repository for the map.

pub mod runtime;
