//! The WIT glue of the clb-allocator plugin: converts the `knit:plugin/clb`
//! records to this crate's types and back. The plugin crate is one
//! `clb_plugin!` line.

pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "clb-allocator",
        pub_export_macro: true,
        default_bindings_module: "knit_clb_core::component::bindings",
    });
}

use bindings::exports::knit::plugin::clb;
use bindings::knit::plugin::types::ConfigEntry;

/// Reads the configuration, then plans, on a WIT request.
pub fn allocate(request: clb::AllocateRequest) -> Result<clb::Plan, clb::AllocateError> {
    let config: Vec<(String, String)> = request
        .config
        .into_iter()
        .map(|ConfigEntry { key, value }| (key, value))
        .collect();
    let (spread, cooldown_seconds) =
        crate::parse_config(&config).map_err(clb::AllocateError::InvalidConfig)?;
    let service = crate::Service {
        min_port: request.service.min_port,
        max_port: request.service.max_port,
        ports: request
            .service
            .ports
            .into_iter()
            .map(|p| crate::PortSpec {
                protocol: protocol(p.protocol),
                target_port: p.target_port,
            })
            .collect(),
        spread,
        cooldown_seconds,
        seed: request.service.seed,
    };
    let lbs: Vec<crate::LoadBalancer> = request
        .load_balancers
        .into_iter()
        .map(|lb| crate::LoadBalancer {
            id: lb.id,
            listener_quota: lb.listener_quota,
            foreign_ports: lb
                .foreign_ports
                .into_iter()
                .map(|u| (protocol(u.protocol), u.port))
                .collect(),
        })
        .collect();
    let pods: Vec<crate::Pod> = request
        .pods
        .into_iter()
        .map(|p| crate::Pod {
            name: p.name,
            serving: p.serving,
        })
        .collect();
    let listeners: Vec<crate::Listener> = request
        .listeners
        .into_iter()
        .map(|l| crate::Listener {
            name: l.name,
            lb_id: l.lb_id,
            port: l.port,
            protocol: protocol(l.protocol),
            target_port: l.target_port,
            pod: l.pod,
            last_pod: l.last_pod,
            unbound_for_seconds: l.unbound_for_seconds,
        })
        .collect();
    let plan = crate::plan(&service, &lbs, &pods, &listeners);
    Ok(clb::Plan {
        create: plan
            .create
            .into_iter()
            .map(|c| clb::NewListener {
                lb_id: c.lb_id,
                port: c.port,
                protocol: wit_protocol(c.protocol),
                pod: c.pod,
                target_port: c.target_port,
            })
            .collect(),
        bind: plan
            .bind
            .into_iter()
            .map(|(listener, pod)| clb::Binding { listener, pod })
            .collect(),
        unbind: plan.unbind,
        delete: plan.delete,
        messages: plan
            .messages
            .into_iter()
            .map(|(pod, message)| clb::PodMessage { pod, message })
            .collect(),
    })
}

fn protocol(protocol: clb::Protocol) -> crate::Protocol {
    match protocol {
        clb::Protocol::Tcp => crate::Protocol::Tcp,
        clb::Protocol::Udp => crate::Protocol::Udp,
    }
}

fn wit_protocol(protocol: crate::Protocol) -> clb::Protocol {
    match protocol {
        crate::Protocol::Tcp => clb::Protocol::Tcp,
        crate::Protocol::Udp => clb::Protocol::Udp,
    }
}

/// Defines and exports the clb-allocator component, named and versioned from
/// the calling crate's manifest.
#[macro_export]
macro_rules! clb_plugin {
    () => {
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

        impl $crate::component::bindings::exports::knit::plugin::clb::Guest for Plugin {
            fn allocate(
                request: $crate::component::bindings::exports::knit::plugin::clb::AllocateRequest,
            ) -> Result<
                $crate::component::bindings::exports::knit::plugin::clb::Plan,
                $crate::component::bindings::exports::knit::plugin::clb::AllocateError,
            > {
                $crate::component::allocate(request)
            }
        }

        $crate::component::bindings::export!(Plugin);
    };
}
