//! `knit plugin test`: fixture cases, input → expected output, with a
//! readable diff on mismatch. Each world has its own case format: see
//! `ipam` (offsets may be written as numbers or `first-last` ranges) and
//! `tunnel`.

mod ipam;
mod tunnel;

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::runtime::{Plugin, World};

/// What one case came to: the expected and actual answers, as YAML for the
/// diff, and whether they agree.
struct Outcome {
    description: String,
    passed: bool,
    expected: String,
    actual: String,
}

impl Outcome {
    fn new<T: Serialize + PartialEq>(description: String, expected: &T, actual: &T) -> Self {
        Outcome {
            description,
            passed: expected == actual,
            expected: serde_yaml::to_string(expected).unwrap_or_default(),
            actual: serde_yaml::to_string(actual).unwrap_or_default(),
        }
    }
}

/// Runs every case in `dir`; returns (passed, failed) and prints a diff per
/// failure.
pub fn run(dir: &Path, plugin: &Plugin) -> anyhow::Result<(usize, usize)> {
    let run_case: fn(&Plugin, &str) -> anyhow::Result<Outcome> = match plugin.world {
        World::IpamStrategy => ipam::run_case,
        World::TunnelMapper => tunnel::run_case,
        World::ClbAllocator => anyhow::bail!(
            "knit plugin test has no case format for the {} world",
            plugin.world
        ),
    };
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
        let outcome =
            run_case(plugin, &text).with_context(|| format!("parsing {}", file.display()))?;
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        if outcome.passed {
            passed += 1;
            println!("ok   {name} {}", outcome.description);
        } else {
            failed += 1;
            println!("FAIL {name} {}", outcome.description);
            print_diff(&outcome.expected, &outcome.actual);
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok((passed, failed))
}

fn print_diff(expected: &str, actual: &str) {
    let diff = similar::TextDiff::from_lines(expected, actual);
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
