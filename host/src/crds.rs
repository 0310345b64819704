//! Every CRD knit serves, generated from the Rust types. `crds/` in the
//! repository holds this output; a test fails when it is stale.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::domains::cloudflare::types::{
    CloudflareCredentials, ClusterTunnel, DNSRecord, NetworkRoute, Tunnel, VirtualNetwork,
    WARPConnector,
};
use crate::domains::ipam::types::{IPAllocation, IPPool};
use crate::domains::tke_clb::types::{
    CLBListenerConfig, DedicatedCLBListener, DedicatedCLBService, GROUP as TKE_GROUP,
    MISSPELLED_VERSION,
};
use crate::runtime::kind::Plugin;

/// `(file name, CRD)` for each kind.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("knit.dev_plugins.yaml", Plugin::crd()),
        ("knit.dev_ippools.yaml", IPPool::crd()),
        ("knit.dev_ipallocations.yaml", IPAllocation::crd()),
        (
            "networking.cloud.tencent.com_dedicatedclbservices.yaml",
            with_misspelled_version(DedicatedCLBService::crd()),
        ),
        (
            "networking.cloud.tencent.com_dedicatedclblisteners.yaml",
            with_misspelled_version(DedicatedCLBListener::crd()),
        ),
        (
            "networking.cloud.tencent.com_clblistenerconfigs.yaml",
            CLBListenerConfig::crd(),
        ),
        (
            "networking.cloudflare-operator.io_tunnels.yaml",
            Tunnel::crd(),
        ),
        (
            "networking.cloudflare-operator.io_clustertunnels.yaml",
            ClusterTunnel::crd(),
        ),
        (
            "networking.cloudflare-operator.io_warpconnectors.yaml",
            WARPConnector::crd(),
        ),
        (
            "networking.cloudflare-operator.io_virtualnetworks.yaml",
            VirtualNetwork::crd(),
        ),
        (
            "networking.cloudflare-operator.io_cloudflarecredentials.yaml",
            CloudflareCredentials::crd(),
        ),
        (
            "networking.cloudflare-operator.io_networkroutes.yaml",
            NetworkRoute::crd(),
        ),
        (
            "networking.cloudflare-operator.io_dnsrecords.yaml",
            DNSRecord::crd(),
        ),
    ]
    .into_iter()
    .map(|(file, crd)| (file, with_kubernetes_formats(crd)))
    .collect()
}

/// The seed's examples use `v1apha1`: serve it too, deprecated, with the same
/// schema (no conversion needed), so they apply unchanged.
fn with_misspelled_version(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut alias = crd.spec.versions[0].clone();
    alias.name = MISSPELLED_VERSION.into();
    alias.storage = false;
    alias.deprecated = Some(true);
    alias.deprecation_warning = Some(format!(
        "{TKE_GROUP}/{MISSPELLED_VERSION} is a misspelling kept for the seed's examples; use {TKE_GROUP}/{}",
        crd.spec.versions[0].name
    ));
    crd.spec.versions.push(alias);
    crd
}

/// schemars describes Rust's unsigned integers as `format: uint32`/`uint64`,
/// which the API server does not know (it warns on every request). Kubernetes
/// integers are int64 with a minimum, so say that instead.
fn with_kubernetes_formats(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                let unsigned = matches!(
                    map.get("format").and_then(|f| f.as_str()),
                    Some("uint" | "uint8" | "uint16" | "uint32" | "uint64")
                );
                if unsigned {
                    map.insert("format".into(), "int64".into());
                    map.entry("minimum").or_insert(0.into());
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(&crd).expect("CRDs serialize");
    walk(&mut value);
    serde_json::from_value(value).expect("the CRD still deserializes")
}

/// One CRD as the YAML written to `crds/<file>`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    format!(
        "---\n{}",
        serde_yaml::to_string(crd).expect("CRDs serialize")
    )
}
