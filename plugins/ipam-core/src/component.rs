//! The WIT glue shared by the IPAM strategy plugins: converts the
//! `knit:plugin/ipam` records to this crate's types and back. Each plugin crate
//! is one `ipam_plugin!` line.

pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "ipam-strategy",
        pub_export_macro: true,
        default_bindings_module: "knit_ipam_core::component::bindings",
    });
}

use bindings::exports::knit::plugin::ipam;
use bindings::knit::plugin::types::ConfigEntry;

/// Runs one strategy on a WIT request.
pub fn allocate(
    strategy: crate::Strategy,
    request: ipam::AllocateRequest,
) -> Result<Vec<u64>, ipam::AllocateError> {
    let native = crate::Request {
        size: request.size,
        allocated: crate::OffsetSet::from_words(
            request
                .allocated
                .indexes
                .iter()
                .copied()
                .zip(request.allocated.bits.iter().copied()),
        ),
        excluded: request.excluded.iter().map(|r| r.first..=r.last).collect(),
        cursor: request.cursor,
        count: request.count,
        seed: request.seed,
    };
    let config: Vec<(String, String)> = request
        .config
        .into_iter()
        .map(|ConfigEntry { key, value }| (key, value))
        .collect();
    crate::allocate(strategy, &native, &config).map_err(|error| match error {
        crate::AllocateError::Exhausted(free) => ipam::AllocateError::Exhausted(free),
        crate::AllocateError::InvalidConfig(why) => ipam::AllocateError::InvalidConfig(why),
        crate::AllocateError::InvalidRequest(why) => ipam::AllocateError::InvalidRequest(why),
    })
}

/// Defines and exports a plugin component for one built-in strategy, named
/// and versioned from the calling crate's manifest.
#[macro_export]
macro_rules! ipam_plugin {
    ($strategy:expr) => {
        struct Plugin;

        impl $crate::component::bindings::exports::knit::plugin::describe::Guest for Plugin {
            fn describe() -> $crate::component::bindings::knit::plugin::types::PluginInfo {
                $crate::component::bindings::knit::plugin::types::PluginInfo {
                    name: env!("CARGO_PKG_NAME").into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    description: env!("CARGO_PKG_DESCRIPTION").into(),
                }
            }
        }

        impl $crate::component::bindings::exports::knit::plugin::ipam::Guest for Plugin {
            fn allocate(
                request: $crate::component::bindings::exports::knit::plugin::ipam::AllocateRequest,
            ) -> Result<
                Vec<u64>,
                $crate::component::bindings::exports::knit::plugin::ipam::AllocateError,
            > {
                $crate::component::allocate($strategy, request)
            }
        }

        $crate::component::bindings::export!(Plugin);
    };
}
