//! `knit-ipam`, the CNI IPAM plugin: the process edge. The protocol and
//! everything behind it live in `knit::cni`.

fn main() -> std::process::ExitCode {
    knit::cni::plugin_main("KNIT_IPAM_LOG_LEVEL", knit::cni::run)
}
