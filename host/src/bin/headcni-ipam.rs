//! `headcni-ipam`: knit's IPAM plugin under HeadCNI's name, reading the
//! seed's `"type": "headcni-ipam"` section (`allocation_strategy`) and
//! keeping its allocations under `/var/lib/headcni/`.

fn main() -> std::process::ExitCode {
    knit::cni::plugin_main("HEADCNI_LOG_LEVEL", knit::cni::run)
}
