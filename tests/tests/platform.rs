//! The test control plane does what later tests rely on: the controller-manager creates
//! ServiceAccounts, ReplicaSets and Pods and garbage-collects owned objects, and the apiserver
//! issues ServiceAccount tokens for the workload-identity audience and publishes their keys.

use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, PostParams};
use pgmcp_tests::{TestEnv, eventually};
use serde_json::{Value, json};

#[tokio::test]
async fn new_namespaces_get_a_default_service_account_and_the_root_ca() {
    let ns = TestEnv::shared()
        .namespace("defaults")
        .await
        .expect("namespace");
    let sas = ns.api::<ServiceAccount>();
    let cms = ns.api::<ConfigMap>();
    eventually(
        "ServiceAccount default",
        Duration::from_secs(30),
        || async { sas.get_opt("default").await.expect("get").is_some() },
    )
    .await;
    eventually(
        "ConfigMap kube-root-ca.crt",
        Duration::from_secs(30),
        || async {
            cms.get_opt("kube-root-ca.crt")
                .await
                .expect("get")
                .is_some()
        },
    )
    .await;
}

#[tokio::test]
async fn deployments_get_pending_pods_and_deleting_them_collects_the_garbage() {
    let ns = TestEnv::shared().namespace("gc").await.expect("namespace");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "example.invalid/web:1" }] }
            }
        }
    }))
    .expect("deployment");
    let deployments = ns.api::<Deployment>();
    let replicasets = ns.api::<ReplicaSet>();
    let pods = ns.api::<Pod>();
    // The ServiceAccount admission plugin needs the default ServiceAccount before pods exist.
    let sas = ns.api::<ServiceAccount>();
    eventually(
        "ServiceAccount default",
        Duration::from_secs(30),
        || async { sas.get_opt("default").await.expect("get").is_some() },
    )
    .await;
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");
    let count = |n: usize| {
        let pods = pods.clone();
        move || {
            let pods = pods.clone();
            async move {
                pods.list(&ListParams::default())
                    .await
                    .expect("list")
                    .items
                    .len()
                    == n
            }
        }
    };
    eventually("two pods", Duration::from_secs(60), count(2)).await;
    let listed = pods.list(&ListParams::default()).await.expect("list");
    for pod in &listed.items {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        assert_eq!(phase, Some("Pending"), "no kubelet, so pods stay Pending");
    }
    assert_eq!(
        replicasets
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );

    deployments
        .delete("web", &DeleteParams::background())
        .await
        .expect("delete deployment");
    eventually(
        "garbage collection of the pods",
        Duration::from_secs(60),
        count(0),
    )
    .await;
    let left = replicasets
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .len();
    assert_eq!(left, 0, "the ReplicaSet was garbage-collected");
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[tokio::test]
async fn service_account_tokens_are_issued_for_the_workload_identity_audience() {
    let env = TestEnv::shared();
    let ns = env.namespace("tokens").await.expect("namespace");
    let sas = ns.api::<ServiceAccount>();
    let sa: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "mcp" } })).expect("sa");
    sas.create(&PostParams::default(), &sa)
        .await
        .expect("create sa");
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": { "audiences": [pgmcp_crds::workload_identity::TOKEN_AUDIENCE], "expirationSeconds": 3600 }
    }))
    .expect("token request");
    let issued = sas
        .create_token_request("mcp", &PostParams::default(), &request)
        .await
        .expect("TokenRequest");
    let token = issued.status.expect("status").token;
    let claims = jwt_claims(&token);
    assert_eq!(claims["iss"], json!(env.server()));
    assert_eq!(
        claims["aud"],
        json!([pgmcp_crds::workload_identity::TOKEN_AUDIENCE])
    );
    assert_eq!(
        claims["sub"],
        json!(format!("system:serviceaccount:{}:mcp", ns.name))
    );

    // What an Entra-like verifier reads: OIDC discovery and the signing keys.
    let get = |path: &str| http::Request::get(path).body(Vec::new()).expect("request");
    let discovery: Value = ns
        .client
        .request(get("/.well-known/openid-configuration"))
        .await
        .expect("discovery");
    assert_eq!(discovery["issuer"], json!(env.server()));
    let jwks: Value = ns
        .client
        .request(get("/openid/v1/jwks"))
        .await
        .expect("jwks");
    let header: Value = {
        let head = token.split('.').next().expect("header");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .expect("b64");
        serde_json::from_slice(&bytes).expect("json")
    };
    assert_eq!(header["alg"], json!("RS256"), "tokens are RS256, as on AKS");
    let kids: Vec<&Value> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| &k["kid"])
        .collect();
    assert!(
        kids.contains(&&header["kid"]),
        "the signing key {} is published: {jwks}",
        header["kid"]
    );
}
