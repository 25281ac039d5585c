//! The Azure Workload Identity webhook fake as a user meets it on a cluster: registered with the
//! real kube-apiserver, which calls it for labelled pods; the tests read the created pods back as
//! `kubectl get pod -o yaml` shows them.

use std::sync::OnceLock;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use pgmcp_tests::TestEnv;
use pgmcp_tests::webhook::{WebhookConfig, WorkloadIdentityWebhook};
use serde_json::{Value, json};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const SA_TENANT: &str = "22222222-2222-2222-2222-222222222222";
const CLIENT: &str = "11111111-1111-1111-1111-111111111111";
const AUTHORITY: &str = "https://login.microsoftonline.com/";

/// The webhook of this test binary. Its MutatingWebhookConfiguration is cluster-wide, so the
/// tests share one server; it runs on a runtime of its own, which outlives each test's.
fn webhook() -> &'static WorkloadIdentityWebhook {
    static WEBHOOK: OnceLock<(tokio::runtime::Runtime, WorkloadIdentityWebhook)> = OnceLock::new();
    let (_, webhook) = WEBHOOK.get_or_init(|| {
        let env = TestEnv::shared();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("webhook runtime");
        // block_on needs a thread outside the calling test's runtime.
        let webhook = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    runtime.block_on(async {
                        let client = env.client().await?;
                        let config = WebhookConfig::new(TENANT, AUTHORITY);
                        WorkloadIdentityWebhook::start(client, "127.0.0.1:0", config).await
                    })
                })
                .join()
                .expect("webhook start does not panic")
        })
        .expect("the webhook starts and the apiserver calls it");
        (runtime, webhook)
    });
    webhook
}

async fn create_service_account(api: &Api<ServiceAccount>, name: &str, annotations: Value) {
    let sa: ServiceAccount = serde_json::from_value(json!({
        "metadata": { "name": name, "annotations": annotations }
    }))
    .expect("ServiceAccount");
    api.create(&PostParams::default(), &sa)
        .await
        .expect("ServiceAccount is created");
}

/// A pod of ServiceAccount `sa` with containers `app` and `sidecar` and init container `init`.
fn pod(name: &str, sa: &str, labels: Value, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels, "annotations": annotations },
        "spec": {
            "serviceAccountName": sa,
            "initContainers": [{ "name": "init", "image": "busybox" }],
            "containers": [
                { "name": "app", "image": "app" },
                { "name": "sidecar", "image": "sidecar" }
            ]
        }
    }))
    .expect("Pod")
}

fn labelled() -> Value {
    json!({ "azure.workload.identity/use": "true" })
}

/// Creates `pod` and returns it as the apiserver stored it, as JSON.
async fn create(api: &Api<Pod>, pod: &Pod) -> Value {
    let created = api
        .create(&PostParams::default(), pod)
        .await
        .expect("the pod is admitted");
    serde_json::to_value(created).expect("Pod as JSON")
}

/// The (init) container `name` of `pod`.
fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("container {name} in {pod:#}"))
}

/// The entry named `name` in the list `list` of `object`, or null.
fn named<'a>(object: &'a Value, list: &str, name: &str) -> &'a Value {
    object[list]
        .as_array()
        .and_then(|items| items.iter().find(|item| item["name"] == name))
        .unwrap_or(&Value::Null)
}

fn env(values: &[(&str, &str)]) -> Value {
    values
        .iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect()
}

fn token_mount() -> Value {
    json!({
        "name": "azure-identity-token",
        "mountPath": "/var/run/secrets/azure/tokens",
        "readOnly": true
    })
}

fn token_volume(expiration_seconds: i64) -> Value {
    json!({
        "name": "azure-identity-token",
        "projected": {
            "defaultMode": 420,
            "sources": [{
                "serviceAccountToken": {
                    "audience": "api://AzureADTokenExchange",
                    "expirationSeconds": expiration_seconds,
                    "path": "azure-identity-token"
                }
            }]
        }
    })
}

#[tokio::test]
async fn labelled_pod_gets_the_identity_env_token_mount_and_projected_volume() {
    let webhook = webhook();
    let ns = TestEnv::shared().namespace("wi-labelled").await.unwrap();
    let annotations = json!({
        "azure.workload.identity/client-id": CLIENT,
        "azure.workload.identity/tenant-id": SA_TENANT
    });
    create_service_account(&ns.api(), "app", annotations).await;
    let reviews = webhook.reviews();

    let pod = create(&ns.api(), &pod("app", "app", labelled(), json!({}))).await;

    assert!(
        webhook.reviews() > reviews,
        "the apiserver called the webhook"
    );
    let injected = env(&[
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_TENANT_ID", SA_TENANT),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            "/var/run/secrets/azure/tokens/azure-identity-token",
        ),
        ("AZURE_AUTHORITY_HOST", AUTHORITY),
    ]);
    for name in ["init", "app", "sidecar"] {
        let container = container(&pod, name);
        assert_eq!(container["env"], injected, "env of {name}");
        assert_eq!(
            *named(container, "volumeMounts", "azure-identity-token"),
            token_mount(),
            "mounts of {name}"
        );
    }
    assert_eq!(
        *named(&pod["spec"], "volumes", "azure-identity-token"),
        token_volume(3600)
    );
}

#[tokio::test]
async fn pod_without_the_label_is_untouched() {
    webhook();
    let ns = TestEnv::shared().namespace("wi-unlabelled").await.unwrap();
    let annotations = json!({ "azure.workload.identity/client-id": CLIENT });
    create_service_account(&ns.api(), "app", annotations).await;

    let pod = create(&ns.api(), &pod("app", "app", json!({}), json!({}))).await;

    for name in ["init", "app", "sidecar"] {
        let container = container(&pod, name);
        assert_eq!(container["env"], Value::Null, "env of {name}");
        assert_eq!(
            *named(container, "volumeMounts", "azure-identity-token"),
            Value::Null
        );
    }
    assert_eq!(
        *named(&pod["spec"], "volumes", "azure-identity-token"),
        Value::Null
    );
}

#[tokio::test]
async fn env_a_container_sets_wins_and_the_tenant_falls_back_to_the_webhooks() {
    webhook();
    let ns = TestEnv::shared().namespace("wi-fallback").await.unwrap();
    // No client-id annotation: the real webhook has no other source and injects none.
    create_service_account(&ns.api(), "app", json!({})).await;
    let mut pod = pod("app", "app", labelled(), json!({}));
    let spec = pod.spec.as_mut().unwrap();
    spec.containers[0].env = serde_json::from_value(env(&[
        ("AZURE_AUTHORITY_HOST", "https://login.example/"),
        ("AZURE_TENANT_ID", "own-tenant"),
    ]))
    .unwrap();

    let pod = create(&ns.api(), &pod).await;

    let token_file = (
        "AZURE_FEDERATED_TOKEN_FILE",
        "/var/run/secrets/azure/tokens/azure-identity-token",
    );
    assert_eq!(
        container(&pod, "app")["env"],
        env(&[
            ("AZURE_AUTHORITY_HOST", "https://login.example/"),
            ("AZURE_TENANT_ID", "own-tenant"),
            token_file,
        ])
    );
    assert_eq!(
        container(&pod, "sidecar")["env"],
        env(&[
            ("AZURE_TENANT_ID", TENANT),
            token_file,
            ("AZURE_AUTHORITY_HOST", AUTHORITY)
        ])
    );
}

#[tokio::test]
async fn skip_containers_get_neither_env_nor_mount() {
    webhook();
    let ns = TestEnv::shared().namespace("wi-skip").await.unwrap();
    let annotations = json!({ "azure.workload.identity/client-id": CLIENT });
    create_service_account(&ns.api(), "app", annotations).await;
    let skip = json!({ "azure.workload.identity/skip-containers": "sidecar; init" });

    let pod = create(&ns.api(), &pod("app", "app", labelled(), skip)).await;

    for name in ["init", "sidecar"] {
        let container = container(&pod, name);
        assert_eq!(container["env"], Value::Null, "env of {name}");
        assert_eq!(
            *named(container, "volumeMounts", "azure-identity-token"),
            Value::Null,
            "mounts of {name}"
        );
    }
    let app = container(&pod, "app");
    assert_eq!(
        *named(app, "env", "AZURE_CLIENT_ID"),
        json!({ "name": "AZURE_CLIENT_ID", "value": CLIENT })
    );
    assert_eq!(
        *named(app, "volumeMounts", "azure-identity-token"),
        token_mount()
    );
    assert_eq!(
        *named(&pod["spec"], "volumes", "azure-identity-token"),
        token_volume(3600)
    );
}

#[tokio::test]
async fn token_expiration_comes_from_the_pod_then_the_service_account() {
    webhook();
    let ns = TestEnv::shared().namespace("wi-expiration").await.unwrap();
    let annotations = json!({
        "azure.workload.identity/client-id": CLIENT,
        "azure.workload.identity/service-account-token-expiration": "7200"
    });
    create_service_account(&ns.api(), "app", annotations).await;
    let expiration = |seconds: &str| json!({ "azure.workload.identity/service-account-token-expiration": seconds });

    let from_sa = create(&ns.api(), &pod("from-sa", "app", labelled(), json!({}))).await;
    let from_pod = create(
        &ns.api(),
        &pod("from-pod", "app", labelled(), expiration("86400")),
    )
    .await;

    assert_eq!(
        *named(&from_sa["spec"], "volumes", "azure-identity-token"),
        token_volume(7200)
    );
    assert_eq!(
        *named(&from_pod["spec"], "volumes", "azure-identity-token"),
        token_volume(86400)
    );
}

#[tokio::test]
async fn out_of_range_token_expiration_is_refused_with_azures_message() {
    webhook();
    let ns = TestEnv::shared()
        .namespace("wi-expiration-range")
        .await
        .unwrap();
    create_service_account(&ns.api(), "app", json!({})).await;
    let api: Api<Pod> = ns.api();

    for (seconds, message) in [
        (
            "60",
            "token expiration 60 not valid. Expected value to be between 3600 and 86400",
        ),
        (
            "86401",
            "token expiration 86401 not valid. Expected value to be between 3600 and 86400",
        ),
        ("1h", "strconv.ParseInt: parsing \"1h\": invalid syntax"),
    ] {
        let annotations =
            json!({ "azure.workload.identity/service-account-token-expiration": seconds });
        let refused = api
            .create(
                &PostParams::default(),
                &pod("app", "app", labelled(), annotations),
            )
            .await
            .expect_err("the pod is refused");
        let kube::Error::Api(status) = refused else {
            panic!("expected the apiserver's refusal, got {refused}");
        };
        assert_eq!(
            (status.code, status.message.as_str()),
            (
                400,
                format!(
                    "admission webhook \"mutation.azure-workload-identity.io\" denied the \
                     request: {message}"
                )
                .as_str()
            )
        );
    }
    assert!(api.get_opt("app").await.unwrap().is_none());
}

#[tokio::test]
async fn labelled_pod_whose_service_account_is_missing_is_refused_before_the_webhook() {
    webhook();
    let ns = TestEnv::shared().namespace("wi-no-sa").await.unwrap();
    let api: Api<Pod> = ns.api();

    let refused = api
        .create(
            &PostParams::default(),
            &pod("app", "ghost", labelled(), json!({})),
        )
        .await
        .expect_err("the pod is refused");

    // As on AKS: the apiserver's own ServiceAccount admission plugin runs before the webhooks.
    let kube::Error::Api(status) = refused else {
        panic!("expected the apiserver's refusal, got {refused}");
    };
    let message = format!(
        "pods \"app\" is forbidden: error looking up service account {}/ghost: \
         serviceaccount \"ghost\" not found",
        ns.name
    );
    assert_eq!((status.code, status.message), (403, message));
    assert!(api.get_opt("app").await.unwrap().is_none());
}

/// POSTs `body` to the webhook as the apiserver does, and returns the AdmissionReview answer.
async fn post_review(body: Vec<u8>) -> Value {
    let webhook = webhook();
    let ca = reqwest::Certificate::from_pem(webhook.ca_cert_pem().as_bytes()).expect("PEM CA");
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .expect("HTTPS client");
    let answer = client
        .post(webhook.url())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the webhook answers");
    assert_eq!(
        answer.status(),
        200,
        "controller-runtime answers errors in the review"
    );
    answer.json().await.expect("an AdmissionReview")
}

#[tokio::test]
async fn review_of_a_pod_whose_service_account_vanished_is_denied_naming_it() {
    // The webhook's own check, for a ServiceAccount deleted after the apiserver's plugin saw it.
    let ns = TestEnv::shared().namespace("wi-sa-vanished").await.unwrap();
    let pod = serde_json::to_value(pod("app", "ghost", labelled(), json!({}))).unwrap();
    let body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "5c4e1b2a-0000-4000-8000-000000000001",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": ns.name,
            "operation": "CREATE",
            "object": pod
        }
    }))
    .unwrap();

    let answer = post_review(body).await;

    assert_eq!(
        answer,
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": "5c4e1b2a-0000-4000-8000-000000000001",
                "allowed": false,
                "status": { "code": 400, "message": "serviceaccounts \"ghost\" not found" }
            }
        })
    );
}

#[tokio::test]
async fn malformed_review_is_denied_with_400_and_the_parse_error() {
    let answer = post_review(b"{\"apiVersion\": ".to_vec()).await;

    let response = &answer["response"];
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    assert_eq!(
        response["status"]["message"],
        "failed to decode the AdmissionReview: EOF while parsing a value at line 1 column 15"
    );
}
