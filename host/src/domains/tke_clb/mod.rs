//! TKE CLB: every pod selected by a `DedicatedCLBService` gets its own
//! public `IP:port` on a Tencent CLB, one listener per pod and port.

pub mod types;
