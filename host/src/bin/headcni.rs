//! `headcni`, HeadCNI's main CNI plugin: the process edge. Everything
//! behind it lives in `knit::headcni`.

fn main() -> std::process::ExitCode {
    knit::cni::plugin_main("HEADCNI_LOG_LEVEL", knit::headcni::run)
}
