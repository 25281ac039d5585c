//! A fake of Azure Workload Identity's mutating admission webhook (release v1.5.1 of
//! github.com/Azure/azure-workload-identity: `pkg/webhook/webhook.go`, `consts.go`,
//! `deploy/azure-wi-webhook.yaml`), served over HTTPS and registered with the test control plane,
//! so the apiserver itself mutates labelled pods. Its only I/O besides serving: the registration
//! and one ServiceAccount read per review.
//!
//! Mirrored: for a pod labelled `azure.workload.identity/use: "true"`, every container and init
//! container not named in `azure.workload.identity/skip-containers` gets `AZURE_CLIENT_ID` (the
//! ServiceAccount's annotation, no other source), `AZURE_TENANT_ID` (its annotation when present,
//! else the configured tenant), `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST` (none the
//! container sets itself, none with an empty value) and the mount `azure-identity-token`; the pod
//! gets the projected token volume, its `expirationSeconds` from the pod's annotation, else the
//! ServiceAccount's, else 3600, within 3600..=86400. Answers as controller-runtime does: HTTP 200,
//! a base64 JSON Patch, and every error (malformed body, not a Pod, ServiceAccount unreadable, bad
//! expiration) denied with code 400 and the real webhook's message.
//!
//! Left out: the proxy sidecar (a pod asking for it with `inject-proxy-sidecar` is refused, not
//! started without it); v1.6.0's custom token endpoint and new layout (token under
//! `/var/run/secrets/azure/wi/token/`, volume named by a hash of the pod name); metrics;
//! certificate rotation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::routing::post;
use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, Pod, ProjectedVolumeSource, ServiceAccount, ServiceAccountTokenProjection,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::tls_listener::{TlsListener, acceptor};

/// Name of the MutatingWebhookConfiguration, as the real chart installs it.
pub const CONFIGURATION_NAME: &str = "azure-wi-webhook-mutating-webhook-configuration";
/// Name of the webhook in it; the apiserver names it in denials.
pub const WEBHOOK_NAME: &str = "mutation.azure-workload-identity.io";
/// The path the real webhook serves.
pub const PATH: &str = "/mutate-v1-pod";

/// Pod label selecting pods for mutation (the configuration's objectSelector).
pub const USE_LABEL: &str = "azure.workload.identity/use";
/// ServiceAccount annotation: `AZURE_CLIENT_ID`.
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// ServiceAccount annotation: `AZURE_TENANT_ID` (else the webhook's own tenant).
pub const TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";
/// Pod or ServiceAccount annotation (the pod's wins): the token's `expirationSeconds`.
pub const TOKEN_EXPIRATION_ANNOTATION: &str =
    "azure.workload.identity/service-account-token-expiration";
/// Pod annotation: `;`-separated names of containers left alone.
pub const SKIP_CONTAINERS_ANNOTATION: &str = "azure.workload.identity/skip-containers";
/// Pod annotation asking for the proxy sidecar, which this fake does not inject.
pub const INJECT_PROXY_SIDECAR_ANNOTATION: &str = "azure.workload.identity/inject-proxy-sidecar";

/// The projected volume, its mount and the token file in it.
pub const TOKEN_VOLUME: &str = "azure-identity-token";
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/azure/tokens";
pub const TOKEN_FILE: &str = "/var/run/secrets/azure/tokens/azure-identity-token";
/// The real webhook's default `--audience`.
pub const DEFAULT_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Token lifetimes the real webhook accepts, and its default, in seconds.
pub const MIN_TOKEN_EXPIRATION: i64 = 3600;
pub const MAX_TOKEN_EXPIRATION: i64 = 86400;
pub const DEFAULT_TOKEN_EXPIRATION: i64 = 3600;

/// Field manager of the MutatingWebhookConfiguration.
const FIELD_MANAGER: &str = "pgmcp-tests-workload-identity-webhook";
/// The largest request body controller-runtime reads (two objects of 3 MiB and the rest).
const MAX_BODY: usize = 7 * 1024 * 1024;
/// How long [`WorkloadIdentityWebhook::start`] waits for the apiserver to call the webhook.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(60);

/// What the real webhook is configured with (its `azure-wi-webhook-config` ConfigMap and flags).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `AZURE_TENANT_ID`: injected when the ServiceAccount has no `tenant-id` annotation.
    pub tenant_id: String,
    /// `AZURE_AUTHORITY_HOST` (the real webhook derives it from `AZURE_ENVIRONMENT`, e.g.
    /// `https://login.microsoftonline.com/`).
    pub authority_host: String,
    /// `--audience` of the projected token.
    pub audience: String,
}

impl WebhookConfig {
    /// The configuration for `tenant_id` and `authority_host`, with the default audience.
    pub fn new(tenant_id: impl Into<String>, authority_host: impl Into<String>) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            authority_host: authority_host.into(),
            audience: DEFAULT_AUDIENCE.to_owned(),
        }
    }
}

/// A running webhook, registered with the control plane. One per control plane: the
/// configuration is cluster-wide and a second `start` takes it over.
///
/// Dropping it stops answering (kept-alive connections are closed too) and leaves the
/// MutatingWebhookConfiguration in place: with `failurePolicy: Fail`, the apiserver then refuses
/// every labelled pod (`failed calling webhook …`), as a cluster whose webhook is down does,
/// until the next `start` registers its own address.
pub struct WorkloadIdentityWebhook {
    url: String,
    ca_pem: String,
    state: Arc<Served>,
    /// Dropped with the webhook: the server shuts down.
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for WorkloadIdentityWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentityWebhook")
            .field("url", &self.url)
            .field("reviews", &self.reviews())
            .finish_non_exhaustive()
    }
}

/// What the handler shares.
struct Served {
    client: kube::Client,
    config: WebhookConfig,
    reviews: AtomicUsize,
}

impl WorkloadIdentityWebhook {
    /// Serves HTTPS on `bind` (e.g. `127.0.0.1:0`) with a certificate for that IP from a CA of its
    /// own, registers the MutatingWebhookConfiguration through `client` (server-side apply), and
    /// returns once the apiserver has called the webhook (dry-run creates of a labelled pod in
    /// namespace `default`), so callers never race the registration.
    pub async fn start(
        client: kube::Client,
        bind: &str,
        config: WebhookConfig,
    ) -> anyhow::Result<Self> {
        let tcp = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("failed to bind the webhook to {bind}"))?;
        let local = tcp.local_addr()?;
        anyhow::ensure!(
            !local.ip().is_unspecified(),
            "the webhook needs an address the apiserver can call, not {bind}"
        );
        let dir = tempfile::Builder::new()
            .prefix("pgmcp-azure-wi-webhook-")
            .tempdir()?;
        let tls = crate::pki::ServerTls::write_for(
            dir.path(),
            "azure-wi-webhook-webhook-service",
            &[&local.ip().to_string()],
        )?;
        let listener = TlsListener::spawn(tcp, acceptor(&tls.cert, &tls.key)?);

        let state = Arc::new(Served {
            client: client.clone(),
            config,
            reviews: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route(PATH, post(review))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(state.clone());
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        let webhook = Self {
            url: format!("https://{local}{PATH}"),
            ca_pem: std::fs::read_to_string(&tls.ca_cert)?,
            state,
            _shutdown: shutdown,
        };

        let configuration = configuration(&webhook.url, &webhook.ca_pem);
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .patch(
                CONFIGURATION_NAME,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&configuration),
            )
            .await
            .with_context(|| {
                format!("failed to apply MutatingWebhookConfiguration {CONFIGURATION_NAME}")
            })?;
        webhook.wait_until_called(&client).await?;
        Ok(webhook)
    }

    /// Number of AdmissionReviews answered (for tests).
    pub fn reviews(&self) -> usize {
        self.state.reviews.load(Ordering::Relaxed)
    }

    /// `https://<ip>:<port>/mutate-v1-pod`, the configuration's `clientConfig.url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The PEM CA of the serving certificate, the configuration's `caBundle`.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Dry-run creates a labelled pod until the apiserver's call reaches this server: until then
    /// it may still call an earlier registration, or refuse the pod because the ServiceAccount
    /// `default` does not exist yet.
    async fn wait_until_called(&self, client: &kube::Client) -> anyhow::Result<()> {
        let pods = Api::<Pod>::namespaced(client.clone(), "default");
        let probe: Pod = serde_json::from_value(json!({
            "metadata": {
                "generateName": "azure-wi-webhook-probe-",
                "labels": { USE_LABEL: "true" }
            },
            "spec": { "containers": [{ "name": "probe", "image": "probe" }] }
        }))?;
        let deadline = Instant::now() + REGISTRATION_TIMEOUT;
        loop {
            let before = self.reviews();
            let answer = pods
                .create(
                    &PostParams {
                        dry_run: true,
                        ..PostParams::default()
                    },
                    &probe,
                )
                .await;
            if self.reviews() > before {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the apiserver did not call the webhook at {} within {REGISTRATION_TIMEOUT:?} \
                     (last dry-run create: {})",
                    self.url,
                    match answer {
                        Ok(_) => "admitted without calling it".to_owned(),
                        Err(err) => err.to_string(),
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The configuration as `deploy/azure-wi-webhook.yaml` has it, calling `url` instead of the
/// webhook's Service, and with the timeout and review versions of this harness.
fn configuration(url: &str, ca_pem: &str) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(CONFIGURATION_NAME.to_owned()),
            labels: Some(
                [(
                    "azure-workload-identity.io/system".to_owned(),
                    "true".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: WEBHOOK_NAME.to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            client_config: WebhookClientConfig {
                url: Some(url.to_owned()),
                ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
                service: None,
            },
            failure_policy: Some("Fail".to_owned()),
            match_policy: Some("Equivalent".to_owned()),
            object_selector: Some(LabelSelector {
                match_labels: Some([(USE_LABEL.to_owned(), "true".to_owned())].into()),
                match_expressions: None,
            }),
            reinvocation_policy: Some("IfNeeded".to_owned()),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".to_owned()]),
                operations: Some(vec!["CREATE".to_owned()]),
                resources: Some(vec!["pods".to_owned()]),
                scope: None,
            }]),
            side_effects: "None".to_owned(),
            timeout_seconds: Some(10),
            ..MutatingWebhook::default()
        }]),
    }
}

/// `POST /mutate-v1-pod`.
async fn review(State(state): State<Arc<Served>>, headers: HeaderMap, body: Bytes) -> Json<Value> {
    let answer = answer(&state, &headers, &body).await;
    state.reviews.fetch_add(1, Ordering::Relaxed);
    Json(answer)
}

async fn answer(state: &Served, headers: &HeaderMap, body: &[u8]) -> Value {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let request = match decode(content_type, body) {
        Ok(request) => request,
        Err(message) => return rejection(None, &message),
    };
    let pod = match request.pod() {
        Ok(pod) => pod,
        Err(message) => return rejection(Some(&request), &message),
    };
    let name = service_account_name(&pod);
    let service_account =
        Api::<ServiceAccount>::namespaced(state.client.clone(), &request.namespace)
            .get(name)
            .await
            // Go's `err.Error()` of a StatusError is the apiserver's message alone.
            .map_err(|err| match err {
                kube::Error::Api(status) => status.message,
                other => other.to_string(),
            });
    let mutated =
        service_account.and_then(|sa| mutate(&pod, &request.namespace, &sa, &state.config));
    match mutated {
        Ok(mutated) => admission(&request, &pod, &mutated),
        Err(message) => rejection(Some(&request), &message),
    }
}

/// The parts of an `AdmissionReview` request the webhook reads.
#[derive(Debug)]
struct Request {
    /// `admission.k8s.io/v1` or `v1beta1`, echoed in the answer.
    api_version: String,
    uid: String,
    namespace: String,
    object: Option<Value>,
}

impl Request {
    /// The object as a Pod; the real webhook decodes it with the scheme, so another kind fails.
    fn pod(&self) -> Result<Pod, String> {
        let object = match &self.object {
            Some(object) if object.as_object().is_some_and(|o| !o.is_empty()) => object,
            _ => return Err("there is no content to decode".to_owned()),
        };
        let api_version = object["apiVersion"].as_str().unwrap_or("v1");
        let kind = object["kind"].as_str().unwrap_or("Pod");
        if (api_version, kind) != ("v1", "Pod") {
            return Err(format!(
                "unable to decode {api_version}, Kind={kind} into a Pod"
            ));
        }
        serde_json::from_value(object.clone())
            .map_err(|err| format!("failed to decode the Pod: {err}"))
    }
}

/// The request in an `AdmissionReview` body, or why there is none.
fn decode(content_type: &str, body: &[u8]) -> Result<Request, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Review {
        #[serde(default)]
        api_version: String,
        #[serde(default)]
        kind: String,
        request: Option<RequestBody>,
    }
    #[derive(Deserialize)]
    struct RequestBody {
        #[serde(default)]
        uid: String,
        #[serde(default)]
        namespace: String,
        object: Option<Value>,
    }

    if body.is_empty() {
        return Err("request body is empty".to_owned());
    }
    if content_type != "application/json" {
        return Err(format!(
            "contentType={content_type}, expected application/json"
        ));
    }
    let review: Review = serde_json::from_slice(body)
        .map_err(|err| format!("failed to decode the AdmissionReview: {err}"))?;
    if review.kind != "AdmissionReview"
        || !matches!(
            review.api_version.as_str(),
            "admission.k8s.io/v1" | "admission.k8s.io/v1beta1"
        )
    {
        return Err(format!(
            "expected an admission.k8s.io/v1 AdmissionReview, got apiVersion {:?} kind {:?}",
            review.api_version, review.kind
        ));
    }
    let request = review
        .request
        .ok_or_else(|| "the AdmissionReview has no request".to_owned())?;
    Ok(Request {
        api_version: review.api_version,
        uid: request.uid,
        namespace: request.namespace,
        object: request.object,
    })
}

/// An allowed answer patching `pod` into `mutated` (no patch when nothing changed, as on a
/// reinvocation).
fn admission(request: &Request, pod: &Pod, mutated: &Pod) -> Value {
    let before = serde_json::to_value(pod).unwrap_or_default();
    let after = serde_json::to_value(mutated).unwrap_or_default();
    let patch = json_patch::diff(&before, &after);
    let mut response = json!({
        "uid": request.uid,
        "allowed": true,
        "status": { "code": 200 },
    });
    if !patch.0.is_empty() {
        let bytes = serde_json::to_vec(&patch).unwrap_or_default();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    json!({
        "apiVersion": request.api_version,
        "kind": "AdmissionReview",
        "response": response,
    })
}

/// controller-runtime's `admission.Errored(400, err)`: denied, with the message.
fn rejection(request: Option<&Request>, message: &str) -> Value {
    let api_version = request.map_or("admission.k8s.io/v1", |r| r.api_version.as_str());
    json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "response": {
            "uid": request.map(|r| r.uid.as_str()).unwrap_or_default(),
            "allowed": false,
            "status": { "code": 400, "message": message },
        },
    })
}

fn service_account_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.as_deref())
        .filter(|name| !name.is_empty())
        .unwrap_or("default")
}

/// `pod` as the real webhook leaves it, given its ServiceAccount `sa`; no I/O.
fn mutate(
    pod: &Pod,
    namespace: &str,
    sa: &ServiceAccount,
    config: &WebhookConfig,
) -> Result<Pod, String> {
    let pod_annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let sa_annotations = sa.metadata.annotations.clone().unwrap_or_default();
    if pod_annotations.contains_key(INJECT_PROXY_SIDECAR_ANNOTATION) {
        return Err(format!(
            "the workload identity webhook of the test harness does not inject the proxy sidecar \
             ({INJECT_PROXY_SIDECAR_ANNOTATION})"
        ));
    }
    let expiration = token_expiration(
        pod_annotations.get(TOKEN_EXPIRATION_ANNOTATION),
        sa_annotations.get(TOKEN_EXPIRATION_ANNOTATION),
    )?;
    let client_id = sa_annotations
        .get(CLIENT_ID_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    // Present but empty still wins over the webhook's tenant (and then nothing is injected).
    let tenant_id = sa_annotations
        .get(TENANT_ID_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| config.tenant_id.clone());
    let skip: Vec<&str> = pod_annotations
        .get(SKIP_CONTAINERS_ANNOTATION)
        .map(|list| list.split(';').map(str::trim).collect())
        .unwrap_or_default();
    let env = [
        ("AZURE_CLIENT_ID", client_id.as_str()),
        ("AZURE_TENANT_ID", tenant_id.as_str()),
        ("AZURE_FEDERATED_TOKEN_FILE", TOKEN_FILE),
        ("AZURE_AUTHORITY_HOST", config.authority_host.as_str()),
    ];
    let inject = |container: &mut Container| {
        if skip.contains(&container.name.as_str()) {
            return;
        }
        let vars = container.env.get_or_insert_with(Vec::new);
        for (name, value) in env {
            if !value.is_empty() && !vars.iter().any(|var| var.name == name) {
                vars.push(EnvVar {
                    name: name.to_owned(),
                    value: Some(value.to_owned()),
                    value_from: None,
                });
            }
        }
        let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
        if !mounts.iter().any(|mount| mount.name == TOKEN_VOLUME) {
            mounts.push(VolumeMount {
                name: TOKEN_VOLUME.to_owned(),
                mount_path: TOKEN_MOUNT_PATH.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
    };

    let mut mutated = pod.clone();
    // Pods of Deployments and DaemonSets may come without a namespace.
    mutated.metadata.namespace = Some(namespace.to_owned());
    let spec = mutated.spec.get_or_insert_with(Default::default);
    spec.init_containers.iter_mut().flatten().for_each(&inject);
    spec.containers.iter_mut().for_each(&inject);
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    if !volumes.iter().any(projects_the_token) {
        volumes.push(token_volume(expiration, &config.audience));
    }
    Ok(mutated)
}

/// The token's `expirationSeconds`: the pod's annotation, else the ServiceAccount's (each when
/// not empty), else the default; parsed and checked like the real webhook, with its messages.
fn token_expiration(pod: Option<&String>, sa: Option<&String>) -> Result<i64, String> {
    let seconds = match pod
        .filter(|v| !v.is_empty())
        .or(sa.filter(|v| !v.is_empty()))
    {
        None => DEFAULT_TOKEN_EXPIRATION,
        Some(value) => value.parse::<i64>().map_err(|err| {
            let why = match err.kind() {
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                    "value out of range"
                }
                _ => "invalid syntax",
            };
            format!("strconv.ParseInt: parsing {value:?}: {why}")
        })?,
    };
    if !(MIN_TOKEN_EXPIRATION..=MAX_TOKEN_EXPIRATION).contains(&seconds) {
        return Err(format!(
            "token expiration {seconds} not valid. Expected value to be between \
             {MIN_TOKEN_EXPIRATION} and {MAX_TOKEN_EXPIRATION}"
        ));
    }
    Ok(seconds)
}

/// Whether `volume` already projects a ServiceAccount token to `azure-identity-token` (the
/// real webhook's test for "added before", whatever the volume's name).
fn projects_the_token(volume: &Volume) -> bool {
    volume
        .projected
        .iter()
        .flat_map(|projected| projected.sources.iter().flatten())
        .filter_map(|source| source.service_account_token.as_ref())
        .any(|token| token.path == TOKEN_VOLUME)
}

fn token_volume(expiration_seconds: i64, audience: &str) -> Volume {
    Volume {
        name: TOKEN_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    path: TOKEN_VOLUME.to_owned(),
                    expiration_seconds: Some(expiration_seconds),
                    audience: Some(audience.to_owned()),
                }),
                ..VolumeProjection::default()
            }]),
            default_mode: None,
        }),
        ..Volume::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTENT_TYPE: &str = "application/json";

    fn config() -> WebhookConfig {
        WebhookConfig::new("tenant-of-the-webhook", "https://login.example/")
    }

    fn service_account(annotations: Value) -> ServiceAccount {
        serde_json::from_value(json!({
            "metadata": { "name": "app", "namespace": "ns", "annotations": annotations }
        }))
        .unwrap()
    }

    /// A pod as the apiserver sends it for a CREATE (defaults filled in, Go's empty fields).
    fn raw_pod(annotations: Value) -> Value {
        json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": "app",
                "namespace": "ns",
                "creationTimestamp": null,
                "labels": { USE_LABEL: "true" },
                "annotations": annotations
            },
            "spec": {
                "volumes": [{
                    "name": "kube-api-access-x",
                    "projected": { "sources": [{ "serviceAccountToken": {
                        "expirationSeconds": 3607, "path": "token"
                    } }], "defaultMode": 420 }
                }],
                "containers": [{
                    "name": "app",
                    "image": "app",
                    "env": [{ "name": "AZURE_CLIENT_ID", "value": "own" }],
                    "resources": {},
                    "volumeMounts": [{
                        "name": "kube-api-access-x", "readOnly": true,
                        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"
                    }],
                    "terminationMessagePath": "/dev/termination-log",
                    "imagePullPolicy": "Always"
                }, {
                    "name": "sidecar",
                    "image": "sidecar",
                    "resources": {}
                }],
                "restartPolicy": "Always",
                "serviceAccountName": "app",
                "securityContext": {}
            },
            "status": {}
        })
    }

    fn review_body(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4",
                "kind": { "group": "", "version": "v1", "kind": "Pod" },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "namespace": "ns",
                "operation": "CREATE",
                "object": object
            }
        }))
        .unwrap()
    }

    /// The answer to `object` from ServiceAccount `sa`, and the patch it carries, decoded.
    fn answer_for(object: Value, sa: &ServiceAccount) -> (Value, Option<json_patch::Patch>) {
        let request = decode(CONTENT_TYPE, &review_body(object)).unwrap();
        let pod = request.pod().unwrap();
        let answer = match mutate(&pod, &request.namespace, sa, &config()) {
            Ok(mutated) => admission(&request, &pod, &mutated),
            Err(message) => rejection(Some(&request), &message),
        };
        let patch = answer["response"]["patch"].as_str().map(|patch| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(patch)
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        });
        (answer, patch)
    }

    #[test]
    fn patch_adds_exactly_the_identity_to_the_apiservers_pod() {
        let sa = service_account(json!({ CLIENT_ID_ANNOTATION: "client" }));
        let raw = raw_pod(json!({}));
        let (answer, patch) = answer_for(raw.clone(), &sa);

        let response = &answer["response"];
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(response["uid"], "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let mut patched = raw.clone();
        json_patch::patch(&mut patched, &patch.unwrap()).unwrap();

        let mut expected = raw;
        let mount = json!({
            "name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT_PATH, "readOnly": true
        });
        let app = &mut expected["spec"]["containers"][0];
        app["env"] = json!([
            { "name": "AZURE_CLIENT_ID", "value": "own" },
            { "name": "AZURE_TENANT_ID", "value": "tenant-of-the-webhook" },
            { "name": "AZURE_FEDERATED_TOKEN_FILE", "value": TOKEN_FILE },
            { "name": "AZURE_AUTHORITY_HOST", "value": "https://login.example/" }
        ]);
        app["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .push(mount.clone());
        let sidecar = &mut expected["spec"]["containers"][1];
        sidecar["env"] = json!([
            { "name": "AZURE_CLIENT_ID", "value": "client" },
            { "name": "AZURE_TENANT_ID", "value": "tenant-of-the-webhook" },
            { "name": "AZURE_FEDERATED_TOKEN_FILE", "value": TOKEN_FILE },
            { "name": "AZURE_AUTHORITY_HOST", "value": "https://login.example/" }
        ]);
        sidecar["volumeMounts"] = json!([mount]);
        expected["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .push(json!({
                "name": TOKEN_VOLUME,
                "projected": { "sources": [{ "serviceAccountToken": {
                    "audience": DEFAULT_AUDIENCE, "expirationSeconds": 3600, "path": TOKEN_VOLUME
                } }] }
            }));
        assert_eq!(patched, expected);
    }

    #[test]
    fn reinvocation_on_a_mutated_pod_patches_nothing() {
        let sa = service_account(json!({ CLIENT_ID_ANNOTATION: "client" }));
        let (_, patch) = answer_for(raw_pod(json!({})), &sa);
        let mut mutated = raw_pod(json!({}));
        json_patch::patch(&mut mutated, &patch.unwrap()).unwrap();

        let (answer, patch) = answer_for(mutated, &sa);

        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"].get("patchType"), None);
        assert!(patch.is_none());
    }

    #[test]
    fn present_but_empty_tenant_annotation_wins_and_injects_no_tenant() {
        let sa = service_account(json!({ TENANT_ID_ANNOTATION: "" }));
        let pod: Pod = serde_json::from_value(raw_pod(json!({}))).unwrap();

        let mutated = mutate(&pod, "ns", &sa, &config()).unwrap();

        let env = mutated.spec.unwrap().containers[1].env.clone().unwrap();
        let names: Vec<&str> = env.iter().map(|var| var.name.as_str()).collect();
        assert_eq!(
            names,
            ["AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"]
        );
    }

    #[test]
    fn token_expiration_is_read_and_checked_like_azure() {
        let s = |v: &str| Some(v.to_owned());
        for (pod, sa, expected) in [
            (None, None, Ok(3600)),
            (s(""), s("7200"), Ok(7200)),
            (s("86400"), s("7200"), Ok(86400)),
            (
                s("3599"),
                None,
                Err("token expiration 3599 not valid. Expected value to be between 3600 and 86400"),
            ),
            (
                None,
                s("86401"),
                Err(
                    "token expiration 86401 not valid. Expected value to be between 3600 and 86400",
                ),
            ),
            (
                s("1h"),
                None,
                Err("strconv.ParseInt: parsing \"1h\": invalid syntax"),
            ),
            (
                s("99999999999999999999"),
                None,
                Err("strconv.ParseInt: parsing \"99999999999999999999\": value out of range"),
            ),
        ] {
            assert_eq!(
                token_expiration(pod.as_ref(), sa.as_ref()),
                expected.map_err(str::to_owned),
                "pod {pod:?}, ServiceAccount {sa:?}"
            );
        }
    }

    #[test]
    fn proxy_sidecar_is_refused_not_silently_left_out() {
        let sa = service_account(json!({}));
        let raw = raw_pod(json!({ INJECT_PROXY_SIDECAR_ANNOTATION: "true" }));

        let (answer, _) = answer_for(raw, &sa);

        assert_eq!(answer["response"]["allowed"], false);
        assert_eq!(answer["response"]["status"]["code"], 400);
    }

    #[test]
    fn bad_requests_are_denied_with_400_and_a_message() {
        let cases: [(&str, &[u8], &str); 4] = [
            (CONTENT_TYPE, b"", "request body is empty"),
            (
                "text/plain",
                b"{}",
                "contentType=text/plain, expected application/json",
            ),
            (
                CONTENT_TYPE,
                b"{\"apiVersion\":",
                "failed to decode the AdmissionReview: EOF while parsing a value at line 1 column 14",
            ),
            (
                CONTENT_TYPE,
                b"{}",
                "expected an admission.k8s.io/v1 AdmissionReview, got apiVersion \"\" kind \"\"",
            ),
        ];
        for (content_type, body, message) in cases {
            let refused = decode(content_type, body).expect_err("a bad request");
            assert_eq!(refused, message);
            assert_eq!(
                rejection(None, &refused),
                json!({
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "response": {
                        "uid": "", "allowed": false, "status": { "code": 400, "message": message }
                    }
                })
            );
        }
        let config_map = json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": {} });
        let request = decode(CONTENT_TYPE, &review_body(config_map)).unwrap();
        assert_eq!(
            request.pod().unwrap_err(),
            "unable to decode v1, Kind=ConfigMap into a Pod"
        );
    }
}
