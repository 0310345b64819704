//! `knit plugin test`: fixture cases, input → expected output, with a
//! readable diff on mismatch. Offsets in fixtures may be written as numbers or
//! `first-last` ranges.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::runtime::{Plugin, World};

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
#[derive(Deserialize, Serialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
struct Expected {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offsets: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs every case in `dir`; returns (passed, failed) and prints a diff per
/// failure.
pub fn run(dir: &Path, plugin: &Plugin) -> anyhow::Result<(usize, usize)> {
    plugin.expect_world(World::IpamStrategy)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no *.yaml cases in {}", dir.display());
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let case: Case =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
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
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        if actual == case.expect {
            passed += 1;
            println!("ok   {name} {}", case.description);
        } else {
            failed += 1;
            println!("FAIL {name} {}", case.description);
            print_diff(&case.expect, &actual);
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok((passed, failed))
}

fn print_diff(expected: &Expected, actual: &Expected) {
    let expected = serde_yaml::to_string(expected).unwrap_or_default();
    let actual = serde_yaml::to_string(actual).unwrap_or_default();
    let diff = similar::TextDiff::from_lines(&expected, &actual);
    println!("     --- expected\n     +++ actual");
    for change in diff.iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => "-",
            similar::ChangeTag::Insert => "+",
            similar::ChangeTag::Equal => " ",
        };
        print!("     {sign}{change}");
    }
}
