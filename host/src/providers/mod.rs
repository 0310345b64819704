//! Clients of the cloud APIs knit calls. Request signing is kept pure and
//! apart from the HTTP exchange, so it is tested against published vectors.

pub mod budget;
pub mod cloudflare;
pub mod retry;
pub mod secret;
pub mod tencent;
