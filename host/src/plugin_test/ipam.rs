//! `ipam-strategy` cases:
//!
//! ```yaml
//! description: wraps to the start of the pool, skipping what is taken
//! input:
//!   size: 256
//!   allocated: [2, 3, 253]     # offsets, or "first-last" ranges
//!   excluded: [0, 1, 255]
//!   cursor: 253
//!   count: 3
//!   seed: 0
//!   config: {}
//! expect:
//!   offsets: [254, 4, 5]       # or error: "<the refusal's text>"
//! ```

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::Outcome;
use crate::runtime::Plugin;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    description: String,
    input: IpamInput,
    expect: Expected,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IpamInput {
    size: u64,
    #[serde(default)]
    allocated: Vec<Offsets>,
    #[serde(default)]
    excluded: Vec<Offsets>,
    #[serde(default)]
    cursor: Option<u64>,
    count: u32,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    config: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Offsets {
    One(u64),
    Range(String),
}

impl Offsets {
    fn range(&self) -> anyhow::Result<std::ops::RangeInclusive<u64>> {
        match self {
            Offsets::One(offset) => Ok(*offset..=*offset),
            Offsets::Range(text) => {
                let (first, last) = text
                    .split_once('-')
                    .context("a range is written first-last")?;
                Ok(first.trim().parse()?..=last.trim().parse()?)
            }
        }
    }
}

/// What the plugin should answer: offsets, or an error's text.
#[serde_with::skip_serializing_none]
#[derive(Deserialize, Serialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
struct Expected {
    offsets: Option<Vec<u64>>,
    error: Option<String>,
}

pub(super) fn run_case(plugin: &Plugin, text: &str) -> anyhow::Result<Outcome> {
    let case: Case = serde_yaml::from_str(text)?;
    let input = &case.input;
    let mut allocated = knit_ipam_core::OffsetSet::default();
    for offsets in &input.allocated {
        for offset in offsets.range()? {
            allocated.insert(offset);
        }
    }
    let request = knit_ipam_core::Request {
        size: input.size,
        allocated,
        excluded: input
            .excluded
            .iter()
            .map(Offsets::range)
            .collect::<Result<_, _>>()?,
        cursor: input.cursor,
        count: input.count,
        seed: input.seed,
    };
    let config: Vec<(String, String)> = input.config.clone().into_iter().collect();
    let actual = match plugin.allocate(&request, &config) {
        Ok(Ok(offsets)) => Expected {
            offsets: Some(offsets),
            error: None,
        },
        Ok(Err(refusal)) => Expected {
            offsets: None,
            error: Some(refusal.to_string()),
        },
        Err(error) => Expected {
            offsets: None,
            error: Some(error.to_string()),
        },
    };
    Ok(Outcome::new(case.description, &case.expect, &actual))
}
