//! The kernel side of HeadCNI: the veth pair, addresses, routes and
//! forwarding, through netlink (rtnetlink) in the host's network namespace
//! and the pod's. What to make comes from `plan`; this only makes, reads
//! and removes it.
//!
//! A netlink socket stays bound to the namespace it was opened in, so the
//! pod's socket is opened after `setns` into the pod's namespace and this
//! thread returns to the host's at once. The plugin runs a current-thread
//! runtime: every netlink exchange happens on this one thread.

use std::fmt::Display;
use std::fs::File;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use rtnetlink::{
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder, new_connection,
};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use super::plan::{Attached, LinkState, Observed, PlannedRoute, PodNetwork};
use crate::cni::cidr::Cidr;
use crate::cni::error::{CniError, Code};

const ENODEV: i32 = 19;
const ENOENT: i32 = 2;

/// Netlink in the host's namespace.
pub struct Kernel {
    runtime: tokio::runtime::Runtime,
    host: Handle,
}

/// Netlink in a pod's namespace.
pub struct PodNamespace {
    file: File,
    handle: Handle,
}

fn io_error(what: impl Display) -> impl FnOnce(std::io::Error) -> CniError {
    move |error| CniError::io(what, error)
}

fn netlink_error(what: impl Display) -> impl FnOnce(rtnetlink::Error) -> CniError {
    move |error| {
        let detail = match &error {
            rtnetlink::Error::NetlinkError(message) => message.to_io().to_string(),
            other => other.to_string(),
        };
        CniError::new(Code::Io, format!("{what}: {detail}"))
    }
}

/// The errno of a netlink refusal, if it is one.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(-message.raw_code()),
        _ => None,
    }
}

impl Kernel {
    pub fn connect() -> Result<Kernel, CniError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(io_error("starting the netlink runtime"))?;
        let host = open_handle(&runtime)?;
        Ok(Kernel { runtime, host })
    }

    /// The pod's namespace at `path`, or `None` when it no longer exists.
    pub fn pod_namespace(&self, path: &Path) -> Result<Option<PodNamespace>, CniError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(CniError::io(format!("opening {}", path.display()), error)),
        };
        let here = File::open("/proc/thread-self/ns/net")
            .map_err(io_error("opening this thread's network namespace"))?;
        move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network)).map_err(
            |errno| {
                CniError::io(
                    format!("entering the network namespace {}", path.display()),
                    errno.into(),
                )
            },
        )?;
        let handle = open_handle(&self.runtime);
        // Back home before anything else can happen on this thread: a
        // failure here would leave every later step in the pod's namespace.
        move_into_link_name_space(here.as_fd(), Some(LinkNameSpaceType::Network)).map_err(
            |errno| CniError::io("returning to the host's network namespace", errno.into()),
        )?;
        Ok(Some(PodNamespace {
            file,
            handle: handle?,
        }))
    }

    /// Makes the attachment `network` describes. On an error, what was made
    /// is left for the caller's `detach`.
    pub fn attach(
        &self,
        pod: &PodNamespace,
        network: &PodNetwork,
        netns: &str,
    ) -> Result<Attached, CniError> {
        enable_forwarding(network)?;
        self.runtime.block_on(async {
            // A host end left by an ADD that died half-way has this
            // attachment's name: it is this attachment's to replace.
            delete_link(&self.host, &network.host_veth).await?;
            let peer = LinkMessageBuilder::<LinkUnspec>::new()
                .name(network.ifname.clone())
                .mtu(network.mtu)
                .setns_by_fd(pod.file.as_raw_fd())
                .build();
            let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                .name(network.host_veth.clone())
                .mtu(network.mtu)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            self.host
                .link()
                .add(veth)
                .execute()
                .await
                .map_err(netlink_error(format!(
                    "creating the veth pair {} / {}",
                    network.host_veth, network.ifname
                )))?;

            let host_link = find_link(&self.host, &network.host_veth)
                .await?
                .ok_or_else(|| {
                    CniError::new(
                        Code::Io,
                        format!("{} vanished after creation", network.host_veth),
                    )
                })?;
            let host_index = host_link.header.index;
            self.host
                .link()
                .set(
                    LinkUnspec::new_with_index(host_index)
                        .alias(network.alias.clone())
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(netlink_error(format!("bringing {} up", network.host_veth)))?;
            for gateway in network.host_addresses() {
                add_address(&self.host, host_index, Cidr::host(gateway)).await?;
            }
            for route in network.host_routes() {
                let message = route_message(&route, None, host_index)?;
                self.host
                    .route()
                    .add(message)
                    .replace()
                    .execute()
                    .await
                    .map_err(netlink_error(format!(
                        "routing {route} to {}",
                        network.host_veth
                    )))?;
            }

            let pod_link = find_link(&pod.handle, &network.ifname)
                .await?
                .ok_or_else(|| {
                    CniError::new(
                        Code::Io,
                        format!("{} is not in the pod's namespace", network.ifname),
                    )
                })?;
            let pod_index = pod_link.header.index;
            pod.handle
                .link()
                .set(LinkUnspec::new_with_index(pod_index).up().build())
                .execute()
                .await
                .map_err(netlink_error(format!("bringing {} up", network.ifname)))?;
            for ip in &network.addresses {
                add_address(
                    &pod.handle,
                    pod_index,
                    Cidr {
                        network: ip.address,
                        prefix: ip.prefix,
                    },
                )
                .await?;
            }
            for route in &network.routes {
                let message = route_message(&route.dst, route.gw, pod_index)?;
                pod.handle
                    .route()
                    .add(message)
                    .execute()
                    .await
                    .map_err(netlink_error(format!(
                        "adding the pod's route to {}",
                        route.dst
                    )))?;
            }
            Ok(Attached {
                host_mac: mac_of(&host_link),
                pod_mac: mac_of(&pod_link),
                netns: netns.to_string(),
            })
        })
    }

    /// Removes an attachment: the host end (which takes the pod's end and
    /// the host routes with it) and, if the namespace is still there, the
    /// pod's interface. Nothing there is not an error.
    pub fn detach(
        &self,
        host_veth: &str,
        pod: Option<&PodNamespace>,
        ifname: &str,
    ) -> Result<(), CniError> {
        self.runtime.block_on(async {
            delete_link(&self.host, host_veth).await?;
            if let Some(pod) = pod {
                delete_link(&pod.handle, ifname).await?;
            }
            Ok(())
        })
    }

    /// CHECK: the pod's interface, addresses and routes, and the host end.
    pub fn observe(
        &self,
        pod: &PodNamespace,
        ifname: &str,
        host_veth: &str,
    ) -> Result<Observed, CniError> {
        self.runtime.block_on(async {
            let mut observed = Observed::default();
            if let Some(link) = find_link(&pod.handle, ifname).await? {
                let index = link.header.index;
                observed.pod_link = Some(link_state(&link));
                observed.pod_addresses = addresses_of(&pod.handle, index).await?;
                observed.pod_routes = routes_via(&pod.handle, index).await?;
            }
            if let Some(link) = find_link(&self.host, host_veth).await? {
                observed.host_link = Some(link_state(&link));
                observed.host_routes = routes_via(&self.host, link.header.index)
                    .await?
                    .into_iter()
                    .map(|route| route.dst)
                    .collect();
            }
            Ok(observed)
        })
    }

    /// Every link of the host as (name, alias), for GC.
    pub fn host_links(&self) -> Result<Vec<(String, Option<String>)>, CniError> {
        self.runtime.block_on(async {
            let links: Vec<LinkMessage> = self
                .host
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(netlink_error("listing the host's links"))?;
            Ok(links
                .iter()
                .filter_map(|link| {
                    let name = link
                        .attributes
                        .iter()
                        .find_map(|attribute| match attribute {
                            LinkAttribute::IfName(name) => Some(name.clone()),
                            _ => None,
                        })?;
                    let alias = link
                        .attributes
                        .iter()
                        .find_map(|attribute| match attribute {
                            LinkAttribute::IfAlias(alias) => Some(alias.clone()),
                            _ => None,
                        });
                    Some((name, alias))
                })
                .collect())
        })
    }

    pub fn delete_host_link(&self, name: &str) -> Result<(), CniError> {
        self.runtime.block_on(delete_link(&self.host, name))
    }
}

fn open_handle(runtime: &tokio::runtime::Runtime) -> Result<Handle, CniError> {
    let _context = runtime.enter();
    let (connection, handle, _) = new_connection().map_err(io_error("opening a netlink socket"))?;
    runtime.spawn(connection);
    Ok(handle)
}

/// Pods reach each other and the world through the host: it must forward.
/// Written only when off, so a node whose forwarding is on is not touched.
fn enable_forwarding(network: &PodNetwork) -> Result<(), CniError> {
    let mut switches = vec!["/proc/sys/net/ipv4/ip_forward"];
    if network.addresses.iter().any(|ip| ip.address.is_ipv6()) {
        switches.push("/proc/sys/net/ipv6/conf/all/forwarding");
    }
    for switch in switches {
        let current =
            std::fs::read_to_string(switch).map_err(io_error(format!("reading {switch}")))?;
        if current.trim() != "1" {
            std::fs::write(switch, "1")
                .map_err(io_error(format!("enabling forwarding ({switch})")))?;
        }
    }
    Ok(())
}

async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, CniError> {
    let found = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match found {
        Ok(link) => Ok(link),
        Err(error) if matches!(errno(&error), Some(ENODEV | ENOENT)) => Ok(None),
        Err(error) => Err(netlink_error(format!("looking up {name}"))(error)),
    }
}

async fn delete_link(handle: &Handle, name: &str) -> Result<(), CniError> {
    let Some(link) = find_link(handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(()),
        // Gone meanwhile (its peer's deletion took it): what DEL wants.
        Err(error) if matches!(errno(&error), Some(ENODEV | ENOENT)) => Ok(()),
        Err(error) => Err(netlink_error(format!("deleting {name}"))(error)),
    }
}

/// An address with no prefix route (the plan adds the routes it wants)
/// and, for IPv6, no duplicate detection: the link is new and point to
/// point, and DAD would hold the address back for a second or more.
async fn add_address(handle: &Handle, index: u32, address: Cidr) -> Result<(), CniError> {
    let mut flags = AddressFlags::Noprefixroute;
    if address.network.is_ipv6() {
        flags |= AddressFlags::Nodad;
    }
    let mut request = handle.address().add(index, address.network, address.prefix);
    request
        .message_mut()
        .attributes
        .push(AddressAttribute::Flags(flags));
    request
        .execute()
        .await
        .map_err(netlink_error(format!("adding {address}")))
}

fn route_message(dst: &Cidr, gw: Option<IpAddr>, index: u32) -> Result<RouteMessage, CniError> {
    fn invalid<E: Display>(dst: &Cidr) -> impl FnOnce(E) -> CniError + '_ {
        move |error| CniError::config(format!("route to {dst}: {error}"))
    }
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network, dst.prefix)
        .map_err(invalid(dst))?
        .output_interface(index);
    builder = match gw {
        Some(gw) => builder.gateway(gw).map_err(invalid(dst))?,
        None => builder.scope(RouteScope::Link),
    };
    Ok(builder.build())
}

async fn addresses_of(handle: &Handle, index: u32) -> Result<Vec<(IpAddr, u8)>, CniError> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink_error("listing the pod's addresses"))?;
    Ok(messages
        .iter()
        .filter_map(|message| {
            message
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    AddressAttribute::Address(address) => {
                        Some((*address, message.header.prefix_len))
                    }
                    _ => None,
                })
        })
        .collect())
}

/// The main table's routes out of link `index`, both families.
async fn routes_via(handle: &Handle, index: u32) -> Result<Vec<PlannedRoute>, CniError> {
    let mut routes = Vec::new();
    for query in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let messages: Vec<RouteMessage> = handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(netlink_error("listing routes"))?;
        for message in messages {
            if message.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let mut oif = None;
            let mut dst = None;
            let mut gw = None;
            for attribute in &message.attributes {
                match attribute {
                    RouteAttribute::Oif(value) => oif = Some(*value),
                    RouteAttribute::Destination(address) => dst = ip_of(address),
                    RouteAttribute::Gateway(address) => gw = ip_of(address),
                    _ => {}
                }
            }
            if oif != Some(index) {
                continue;
            }
            let ipv6 =
                message.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6;
            let network = dst.unwrap_or(if ipv6 {
                IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED)
            });
            routes.push(PlannedRoute {
                dst: Cidr::containing(network, message.header.destination_prefix_length),
                gw,
            });
        }
    }
    Ok(routes)
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn mac_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Address(bytes) => Some(
                bytes
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

fn link_state(link: &LinkMessage) -> LinkState {
    LinkState {
        mac: mac_of(link),
        mtu: link
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
            .unwrap_or_default(),
        up: link.header.flags.contains(LinkFlags::Up),
    }
}
