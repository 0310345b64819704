//! IPAM strategy logic, free of WASM and I/O.
//!
//! A pool is a line of offsets `0 .. size`; the host maps addresses to offsets.
//! The strategy plugins wrap this crate in a few lines of WIT glue, the host
//! uses it to check a plugin's answer and as the native baseline in benchmarks.

#[cfg(target_arch = "wasm32")]
pub mod component;
mod free_space;
mod offset_set;
mod strategy;

pub use free_space::FreeSpace;
pub use offset_set::OffsetSet;
pub use strategy::{Strategy, allocate};

use std::ops::RangeInclusive;

/// What a strategy is asked: the same fields as the WIT `allocate-request`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub size: u64,
    pub allocated: OffsetSet,
    pub excluded: Vec<RangeInclusive<u64>>,
    pub cursor: Option<u64>,
    pub count: u32,
    pub seed: u64,
}

/// Why no offsets were handed out: the same cases as the WIT `allocate-error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllocateError {
    /// Fewer free offsets than asked for; carries how many are free.
    Exhausted(u64),
    InvalidConfig(String),
    InvalidRequest(String),
}

impl std::fmt::Display for AllocateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllocateError::Exhausted(free) => write!(f, "pool exhausted: {free} free"),
            AllocateError::InvalidConfig(why) => write!(f, "invalid strategy config: {why}"),
            AllocateError::InvalidRequest(why) => write!(f, "invalid request: {why}"),
        }
    }
}

impl std::error::Error for AllocateError {}

/// Checks an answer against its request; the host runs this on every plugin
/// answer, because a plugin is never trusted.
pub fn check_answer(request: &Request, offsets: &[u64]) -> Result<(), String> {
    if offsets.len() != request.count as usize {
        return Err(format!(
            "asked for {} offsets, got {}",
            request.count,
            offsets.len()
        ));
    }
    let space = FreeSpace::new(request)?;
    let mut seen = OffsetSet::default();
    for &offset in offsets {
        if offset >= request.size {
            return Err(format!(
                "offset {offset} is outside the pool (size {})",
                request.size
            ));
        }
        if request.allocated.contains(offset) {
            return Err(format!("offset {offset} is already allocated"));
        }
        if space.is_excluded(offset) {
            return Err(format!("offset {offset} is excluded"));
        }
        if !seen.insert(offset) {
            return Err(format!("offset {offset} appears twice"));
        }
    }
    Ok(())
}
