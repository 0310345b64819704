//! Cloudflare tunnels: Ingresses and HTTPRoutes served through cloudflared,
//! WARP connectors and their private routes.

pub mod types;
