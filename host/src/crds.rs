//! Every CRD knit serves, generated from the Rust types. `crds/` in the
//! repository holds this output; a test fails when it is stale.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::domains::ipam::types::{IPAllocation, IPPool};
use crate::runtime::kind::Plugin;

/// `(file name, CRD)` for each kind.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("knit.dev_plugins.yaml", Plugin::crd()),
        ("knit.dev_ippools.yaml", IPPool::crd()),
        ("knit.dev_ipallocations.yaml", IPAllocation::crd()),
    ]
}

/// One CRD as the YAML written to `crds/<file>`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    format!(
        "---\n{}",
        serde_yaml::to_string(crd).expect("CRDs serialize")
    )
}
