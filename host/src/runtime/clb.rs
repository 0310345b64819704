//! Calls into the `clb-allocator` world.

use knit_clb_core::{NewListener, Plan, Protocol, Request, check_plan};

use super::bindings::clb_allocator::exports::knit::plugin::clb;
use super::plugin::Pre;
use super::{CallError, Plugin, World, text};

impl Plugin {
    /// Asks the allocator which listener each pod port of `request.service`
    /// gets. The outer error is the plugin failing (or a plan the host
    /// refuses); the inner one is the plugin's own refusal of its
    /// configuration or of the request, as text.
    ///
    /// The plugin reads the spread and the cooldown from its configuration
    /// (this plugin's settings, then `config`), not from `request.service`,
    /// whose `spread` and `cooldown_seconds` do not cross into the sandbox.
    /// Every plan is checked with `knit_clb_core::check_plan` before it is
    /// returned.
    pub fn allocate_listeners(
        &self,
        request: &Request,
        config: &[(String, String)],
    ) -> Result<Result<Plan, String>, CallError> {
        let Pre::ClbAllocator(pre) = &self.pre else {
            return Err(self.wrong_world(World::ClbAllocator));
        };
        let wit_request = self.clb_request(request, config);
        let answer = self.call("allocate", |store, _| {
            let instance = pre.instantiate(&mut *store)?;
            instance
                .knit_plugin_clb()
                .call_allocate(&mut *store, &wit_request)
        })?;
        match answer {
            Ok(plan) => {
                let plan = native_plan(plan).map_err(|reason| self.bad_output(reason))?;
                check_plan(
                    &request.service,
                    &request.lbs,
                    &request.pods,
                    &request.listeners,
                    &plan,
                )
                .map_err(|reason| self.bad_output(reason))?;
                Ok(Ok(plan))
            }
            Err(clb::AllocateError::InvalidConfig(why)) => {
                Ok(Err(text::refusal("invalid config", &why)))
            }
            Err(clb::AllocateError::InvalidRequest(why)) => {
                Ok(Err(text::refusal("invalid request", &why)))
            }
        }
    }

    fn clb_request(&self, request: &Request, config: &[(String, String)]) -> clb::AllocateRequest {
        let service = &request.service;
        clb::AllocateRequest {
            service: clb::Service {
                min_port: service.min_port,
                max_port: service.max_port,
                ports: service
                    .ports
                    .iter()
                    .map(|p| clb::PortSpec {
                        protocol: wit_protocol(p.protocol),
                        target_port: p.target_port,
                    })
                    .collect(),
                seed: service.seed,
            },
            load_balancers: request
                .lbs
                .iter()
                .map(|lb| clb::LoadBalancer {
                    id: lb.id.clone(),
                    listener_quota: lb.listener_quota,
                    foreign_ports: lb
                        .foreign_ports
                        .iter()
                        .map(|&(protocol, port)| clb::PortUse {
                            protocol: wit_protocol(protocol),
                            port,
                        })
                        .collect(),
                })
                .collect(),
            pods: request
                .pods
                .iter()
                .map(|p| clb::Pod {
                    name: p.name.clone(),
                    serving: p.serving,
                })
                .collect(),
            listeners: request
                .listeners
                .iter()
                .map(|l| clb::Listener {
                    name: l.name.clone(),
                    lb_id: l.lb_id.clone(),
                    port: l.port,
                    protocol: wit_protocol(l.protocol),
                    target_port: l.target_port,
                    pod: l.pod.clone(),
                    last_pod: l.last_pod.clone(),
                    unbound_for_seconds: l.unbound_for_seconds,
                })
                .collect(),
            config: self.config_entries(config),
        }
    }
}

/// The plan in the core's types, its names bounded and its messages cleaned
/// (see `text`).
fn native_plan(plan: clb::Plan) -> Result<Plan, String> {
    let name = |what: &str, value: String| text::identifier(what, value, text::NAME_LIMIT);
    Ok(Plan {
        create: plan
            .create
            .into_iter()
            .map(|c| {
                Ok(NewListener {
                    lb_id: name("a load balancer ID", c.lb_id)?,
                    port: c.port,
                    protocol: protocol(c.protocol),
                    pod: name("a pod name", c.pod)?,
                    target_port: c.target_port,
                })
            })
            .collect::<Result<_, String>>()?,
        bind: plan
            .bind
            .into_iter()
            .map(|b| {
                Ok((
                    name("a listener name", b.listener)?,
                    name("a pod name", b.pod)?,
                ))
            })
            .collect::<Result<_, String>>()?,
        unbind: plan
            .unbind
            .into_iter()
            .map(|l| name("a listener name", l))
            .collect::<Result<_, String>>()?,
        delete: plan
            .delete
            .into_iter()
            .map(|l| name("a listener name", l))
            .collect::<Result<_, String>>()?,
        messages: plan
            .messages
            .into_iter()
            .map(|m| {
                Ok((
                    name("a pod name", m.pod)?,
                    text::clean(&m.message, text::MESSAGE_LIMIT),
                ))
            })
            .collect::<Result<_, String>>()?,
    })
}

fn protocol(protocol: clb::Protocol) -> Protocol {
    match protocol {
        clb::Protocol::Tcp => Protocol::Tcp,
        clb::Protocol::Udp => Protocol::Udp,
    }
}

fn wit_protocol(protocol: Protocol) -> clb::Protocol {
    match protocol {
        Protocol::Tcp => clb::Protocol::Tcp,
        Protocol::Udp => clb::Protocol::Udp,
    }
}
