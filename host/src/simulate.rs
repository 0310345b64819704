//! `knit simulate`: the controller's planning over manifests, with no cluster.
//! Prints a YAML stream of what the controller would do: children to apply,
//! each parent with the status it would write, and cloud operations.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::domains::ipam::plan::{overlapping_pool, plan_pool};
use crate::domains::ipam::types::{ADDRESS_ANNOTATION, IPAllocation, IPPool};
use crate::runtime::Registry;

/// The manifests read: known kinds parsed, the rest named so the user sees
/// what was ignored.
#[derive(Default)]
pub struct Manifests {
    pub pools: Vec<IPPool>,
    pub allocations: Vec<IPAllocation>,
    pub pods: Vec<Pod>,
    pub ignored: Vec<String>,
}

/// Reads files and directories (their `*.yaml`/`*.yml`, recursively, sorted).
pub fn read_manifests(paths: &[PathBuf]) -> anyhow::Result<Manifests> {
    let mut manifests = Manifests::default();
    for path in paths {
        for file in yaml_files(path)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            manifests
                .add_stream(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        }
    }
    Ok(manifests)
}

impl Manifests {
    /// Adds every document of a YAML stream.
    pub fn add_stream(&mut self, text: &str) -> anyhow::Result<()> {
        for document in serde_yaml::Deserializer::from_str(text) {
            let value: Value = serde::Deserialize::deserialize(document)?;
            if !value.is_null() {
                self.add(value)?;
            }
        }
        Ok(())
    }

    fn add(&mut self, value: Value) -> anyhow::Result<()> {
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
        match (api_version.as_str(), kind.as_str()) {
            ("knit.dev/v1alpha1", "IPPool") => self.pools.push(serde_json::from_value(value)?),
            ("knit.dev/v1alpha1", "IPAllocation") => {
                self.allocations.push(serde_json::from_value(value)?)
            }
            ("v1", "Pod") => self.pods.push(serde_json::from_value(value)?),
            _ => self.ignored.push(format!(
                "{api_version} {kind} {}",
                value["metadata"]["name"].as_str().unwrap_or("<unnamed>")
            )),
        }
        Ok(())
    }
}

fn yaml_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))? {
        let entry = entry?.path();
        if entry.is_dir() {
            files.extend(yaml_files(&entry)?);
        } else if entry.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(entry);
        }
    }
    files.sort();
    Ok(files)
}

/// Plans every parent in `manifests`; returns the documents to print, each
/// with a comment saying what it is.
pub fn simulate(manifests: &Manifests, registry: &Registry, seed: u64) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    // A fixed time keeps the output reproducible.
    let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    for pool in &manifests.pools {
        let plan = plan_pool(
            pool,
            &manifests.allocations,
            &manifests.pods,
            overlapping_pool(pool, &manifests.pools).as_deref(),
            registry,
            seed,
            now.clone(),
        );
        for allocation in &plan.allocations {
            out.push((
                format!(
                    "apply: address for pod {}/{}",
                    allocation.pod_namespace, allocation.pod_name
                ),
                serde_json::to_value(allocation.record(pool)).expect("allocations serialize"),
            ));
            out.push((
                format!(
                    "patch: pod {}/{} annotation",
                    allocation.pod_namespace, allocation.pod_name
                ),
                json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": allocation.pod_name,
                        "namespace": allocation.pod_namespace,
                        "annotations": { ADDRESS_ANNOTATION: allocation.address.to_string() },
                    },
                }),
            ));
        }
        for refusal in &plan.refused {
            tracing::warn!(pool = %pool.name_any(), pod = %refusal.pod, "no address: {}", refusal.message);
        }
        out.push((
            format!("status: IPPool {}", pool.name_any()),
            json!({
                "apiVersion": "knit.dev/v1alpha1",
                "kind": "IPPool",
                "metadata": { "name": pool.name_any() },
                "status": plan.status,
            }),
        ));
    }
    out
}

/// The YAML stream `simulate` prints.
pub fn render(documents: &[(String, Value)]) -> String {
    let mut text = String::new();
    for (comment, document) in documents {
        text.push_str(&format!("---\n# {comment}\n"));
        text.push_str(&serde_yaml::to_string(document).expect("JSON values serialize"));
    }
    text
}
