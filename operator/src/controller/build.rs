//! Build: the desired Kubernetes objects of one binding. Pure: no client, no clock, no
//! randomness, so the same binding always builds the same objects and tests compare them whole.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pgmcp_crds::config::{
    AuditConfig, AuthConfig, CallerClassConfig, CallerMatchConfig, DatabaseConfig, EntraAuthConfig,
    HttpConfig, ResultsConfig, ScopeConfig, ScopeFunction, ScopeGrant, ServerConfig,
    class_role_name,
};
use pgmcp_crds::v1alpha1::{AllowedFunction, Grant, TelemetrySpec};
use pgmcp_crds::{labels, workload_identity};
use sha2::{Digest as _, Sha256};

use super::validate::{Identity, Valid};
use crate::settings::Defaults;

/// Port of the MCP server in the pod and on the Service.
pub const PORT: i32 = 8080;
/// Name of that port.
pub const PORT_NAME: &str = "http";
/// Pod-template annotation holding the hash of the server config, so a config change rolls
/// the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "pgmcp.dev/config-hash";
/// Key of the server config in its ConfigMap.
pub const CONFIG_KEY: &str = "config.json";
/// Where the config is mounted.
pub const CONFIG_DIR: &str = "/etc/pgmcp";
/// Key of the operator's `--trust-bundle` in the server's ConfigMap (mounted in [`CONFIG_DIR`]).
pub const TRUST_BUNDLE_KEY: &str = "ca-certificates.crt";
/// Where the password Secret is mounted (password mode).
pub const PASSWORD_DIR: &str = "/var/run/secrets/pgmcp/postgres";
/// Key of the password in the binding's password Secret.
pub const PASSWORD_KEY: &str = "password";
/// Name of the server container.
pub const CONTAINER: &str = "mcp-server";
/// The unprivileged user and group the server runs as (`nonroot` in images/rootfs/etc/passwd).
const NON_ROOT: i64 = 65532;
/// `OTEL_SERVICE_NAME` of every MCP server, whether or not it exports telemetry.
pub const OTEL_SERVICE_NAME: &str = "pgmcp-server";

/// Everything the binding should have in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    /// Only with more than one replica.
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    /// Only when spec.server.networkPolicy is set.
    pub network_policy: Option<NetworkPolicy>,
    /// In-cluster URL of the MCP endpoint.
    pub endpoint: String,
}

/// Name of every child object of a binding.
pub fn child_name(binding: &str) -> String {
    format!("{binding}-mcp")
}

pub fn build(valid: &Valid, defaults: &Defaults) -> Desired {
    let name = child_name(&valid.name);
    let config = server_config(valid, defaults);
    let config_json = serde_json::to_string_pretty(&config).unwrap_or_default();
    // The hash covers what the server reads at start: its config and the CAs it trusts.
    let mut hasher = Sha256::new();
    hasher.update(config_json.as_bytes());
    let mut data = BTreeMap::from([(CONFIG_KEY.to_owned(), config_json)]);
    if let Some(bundle) = &defaults.trust_bundle {
        hasher.update([0]);
        hasher.update(bundle.pem.as_bytes());
        data.insert(TRUST_BUNDLE_KEY.to_owned(), bundle.pem.to_string());
    }
    let config_hash = hex_prefix(&hasher.finalize(), 16);
    let service = service(valid, &name);
    Desired {
        service_account: service_account(valid, &name),
        config_map: ConfigMap {
            metadata: meta(valid, &name),
            data: Some(data),
            ..Default::default()
        },
        deployment: deployment(valid, defaults, &name, &config_hash),
        pod_disruption_budget: (valid.spec.server.replicas > 1).then(|| PodDisruptionBudget {
            metadata: meta(valid, &name),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(selector(valid)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        network_policy: valid
            .spec
            .server
            .network_policy
            .as_ref()
            .map(|policy| network_policy(valid, &name, policy)),
        endpoint: format!("http://{name}.{}.svc:{PORT}/mcp", valid.namespace),
        service,
    }
}

/// The `pgmcp-server --config` file.
pub fn server_config(valid: &Valid, defaults: &Defaults) -> ServerConfig {
    let spec = &valid.spec;
    let name = child_name(&valid.name);
    let ns = &valid.namespace;
    let mut allowed_hosts = vec![
        name.clone(),
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}.svc.cluster.local"),
    ];
    if let Some(host) = spec.server.public_url.as_deref().and_then(url_host) {
        allowed_hosts.push(host.to_owned());
    }
    let (password_file, workload_identity) = match &valid.identity {
        Identity::Entra { .. } => (None, true),
        Identity::Password { .. } => (Some(format!("{PASSWORD_DIR}/{PASSWORD_KEY}")), false),
    };
    ServerConfig {
        database: DatabaseConfig {
            host: spec.postgres.host.clone(),
            port: u16::try_from(spec.postgres.port).unwrap_or(5432),
            dbname: spec.postgres.database.clone(),
            user: valid.identity.role().to_owned(),
            ssl_mode: spec.postgres.ssl_mode.as_str().to_owned(),
            // The operator's --trust-bundle replaces the public roots for verify-full.
            ssl_root_cert: defaults
                .trust_bundle
                .as_ref()
                .map(|_| format!("{CONFIG_DIR}/{TRUST_BUNDLE_KEY}")),
            password_file,
            workload_identity,
            // The operator's --postgres-scope, for a host whose name does not tell its cloud.
            token_scope: defaults
                .postgres_scope
                .clone()
                .filter(|_| workload_identity),
            ..DatabaseConfig::default()
        },
        scope: ScopeConfig {
            grants: scope_grants(&spec.access.grants),
            functions: scope_functions(&spec.access.functions),
            callers: spec
                .access
                .callers
                .iter()
                .map(|class| CallerClassConfig {
                    name: class.name.clone(),
                    role: class_role_name(valid.identity.role(), &class.name),
                    matches: CallerMatchConfig {
                        app_roles: class.matches.app_roles.clone(),
                        groups: class.matches.groups.clone(),
                        object_ids: class.matches.object_ids.clone(),
                        app_ids: class.matches.app_ids.clone(),
                    },
                    grants: scope_grants(&class.grants),
                    functions: scope_functions(&class.functions),
                })
                .collect(),
        },
        limits: valid.limits.clone(),
        http: HttpConfig {
            listen: format!("0.0.0.0:{PORT}"),
            allowed_hosts,
            allowed_origins: Vec::new(),
            public_url: spec.server.public_url.clone(),
        },
        auth: AuthConfig {
            entra: spec.server.auth.entra.as_ref().map(|e| EntraAuthConfig {
                tenant_id: e.tenant_id.clone(),
                audience: e.audience.clone(),
                required_roles: e.required_roles.clone(),
                allowed_caller_object_ids: e.allowed_caller_object_ids.clone().unwrap_or_default(),
                authority_host: e
                    .authority_host
                    .clone()
                    .unwrap_or_else(|| pgmcp_crds::config::DEFAULT_AUTHORITY_HOST.to_owned()),
            }),
            insecure_allow_unauthenticated: spec.server.auth.none.is_some(),
        },
        results: ResultsConfig {
            untrusted_data_framing: spec.server.results.untrusted_data_framing,
        },
        audit: AuditConfig {
            statements: spec.server.audit.statements,
            binding: Some(format!("{ns}/{}", valid.name)),
        },
    }
}

fn scope_grants(grants: &[Grant]) -> Vec<ScopeGrant> {
    grants
        .iter()
        .map(|g| ScopeGrant {
            schema: g.schema.clone(),
            tables: g.tables.clone(),
        })
        .collect()
}

fn scope_functions(functions: &[AllowedFunction]) -> Vec<ScopeFunction> {
    functions
        .iter()
        .map(|f| ScopeFunction {
            schema: f.schema.clone(),
            name: f.name.clone(),
        })
        .collect()
}

/// The host of an absolute URL (`https://host[:port]/path`).
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    (!host.is_empty()).then_some(host)
}

fn hex_prefix(bytes: &[u8], len: usize) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(len)
        .collect()
}

/// The labels selecting a binding's pods.
fn selector_labels(valid: &Valid) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_owned(), "pgmcp-server".to_owned()),
        (labels::INSTANCE.to_owned(), valid.name.clone()),
    ])
}

/// Labels on every object of a binding.
pub fn common_labels(valid: &Valid) -> BTreeMap<String, String> {
    let mut all = selector_labels(valid);
    all.insert(labels::COMPONENT.to_owned(), "mcp-server".to_owned());
    all.insert(
        labels::MANAGED_BY.to_owned(),
        pgmcp_crds::FIELD_MANAGER.to_owned(),
    );
    all.insert(labels::PART_OF.to_owned(), "pgmcp".to_owned());
    all
}

fn selector(valid: &Valid) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(valid)),
        ..Default::default()
    }
}

fn meta(valid: &Valid, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(valid.namespace.clone()),
        labels: Some(common_labels(valid)),
        owner_references: Some(vec![valid.owner.clone()]),
        ..Default::default()
    }
}

fn service_account(valid: &Valid, name: &str) -> ServiceAccount {
    let mut metadata = meta(valid, name);
    if let Identity::Entra {
        client_id,
        tenant_id,
        ..
    } = &valid.identity
    {
        metadata.annotations = Some(BTreeMap::from([
            (
                workload_identity::CLIENT_ID_ANNOTATION.to_owned(),
                client_id.clone(),
            ),
            (
                workload_identity::TENANT_ID_ANNOTATION.to_owned(),
                tenant_id.clone(),
            ),
        ]));
    }
    ServiceAccount {
        metadata,
        // The server never calls the Kubernetes API; the workload-identity webhook mounts
        // its own projected token.
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

fn service(valid: &Valid, name: &str) -> Service {
    Service {
        metadata: meta(valid, name),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(valid)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port: PORT,
                target_port: Some(IntOrString::String(PORT_NAME.to_owned())),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(PORT_NAME.to_owned()),
            scheme: Some("HTTP".to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Default::default()
    }
}

/// Requests and limits when the binding sets none: the server is small (see BENCHMARKS.md).
fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), q("50m")),
            ("memory".to_owned(), q("64Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), q("256Mi"))])),
        ..Default::default()
    }
}

/// The server container's environment: `SSL_CERT_FILE` when the operator has a trust bundle
/// (the CAs of every HTTPS call the server makes: Entra, OIDC discovery, telemetry export), and
/// the OpenTelemetry variables.
fn server_env(valid: &Valid, defaults: &Defaults) -> Vec<EnvVar> {
    let mut env = Vec::new();
    if defaults.trust_bundle.is_some() {
        env.push(EnvVar {
            name: "SSL_CERT_FILE".to_owned(),
            value: Some(format!("{CONFIG_DIR}/{TRUST_BUNDLE_KEY}")),
            ..Default::default()
        });
    }
    env.extend(otel_env(valid));
    env
}

/// The server container's OpenTelemetry environment, in the standard `OTEL_*` variables the
/// server's SDK reads: its name and resource attributes always, the exporter only with
/// `spec.server.telemetry`. It is part of the pod template, so any change rolls the pods; the
/// headers come from the Secret by reference, so a new value there waits for the next restart.
fn otel_env(valid: &Valid) -> Vec<EnvVar> {
    let plain = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..Default::default()
    };
    let telemetry = valid.spec.server.telemetry.as_ref();
    let mut env = vec![
        plain("OTEL_SERVICE_NAME", OTEL_SERVICE_NAME.to_owned()),
        plain(
            "OTEL_RESOURCE_ATTRIBUTES",
            resource_attributes(valid, telemetry),
        ),
    ];
    let Some(telemetry) = telemetry else {
        return env;
    };
    env.push(plain(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        telemetry.otlp_endpoint.clone(),
    ));
    env.push(plain(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "http/protobuf".to_owned(),
    ));
    if let Some(reference) = &telemetry.headers_secret_ref {
        env.push(EnvVar {
            name: "OTEL_EXPORTER_OTLP_HEADERS".to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: reference.name.clone(),
                    key: reference.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    match sampler_ratio(telemetry.sampling_percent) {
        None => env.push(plain(
            "OTEL_TRACES_SAMPLER",
            "parentbased_always_on".to_owned(),
        )),
        Some(ratio) => {
            env.push(plain(
                "OTEL_TRACES_SAMPLER",
                "parentbased_traceidratio".to_owned(),
            ));
            env.push(plain("OTEL_TRACES_SAMPLER_ARG", ratio));
        }
    }
    env
}

/// `OTEL_TRACES_SAMPLER_ARG` for `percent`: `0.25` for 25, `0.00` for 0 (written from the
/// integer, so never `0.07000000000000001`); `None` at 100 (or above): every trace.
fn sampler_ratio(percent: i32) -> Option<String> {
    (percent < 100).then(|| format!("0.{:02}", percent.max(0)))
}

/// `OTEL_RESOURCE_ATTRIBUTES`: where the server runs, then the binding's own attributes (keys
/// sorted; the CRD refuses the operator's keys there).
fn resource_attributes(valid: &Valid, telemetry: Option<&TelemetrySpec>) -> String {
    let ours = [
        ("k8s.namespace.name", valid.namespace.as_str()),
        ("pgmcp.binding", valid.name.as_str()),
    ];
    let theirs = telemetry
        .into_iter()
        .flat_map(|t| &t.resource_attributes)
        .map(|(k, v)| (k.as_str(), v.as_str()));
    ours.into_iter()
        .chain(theirs)
        .map(|(k, v)| format!("{}={}", encode_attribute(k), encode_attribute(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A key or value of `OTEL_RESOURCE_ATTRIBUTES`, percent-encoded as the OpenTelemetry
/// specification asks (its format is W3C Baggage's): every byte outside baggage-octet (controls,
/// space, `"`, `,`, `;`, `\`, non-ASCII as UTF-8 bytes), and also `%` (the escape itself), `=`
/// (the separator of key and value) and `$` (the kubelet expands `$(NAME)` in env values).
fn encode_attribute(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let baggage_octet =
            matches!(byte, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E);
        if baggage_octet && !matches!(byte, b'%' | b'=' | b'$') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn deployment(valid: &Valid, defaults: &Defaults, name: &str, config_hash: &str) -> Deployment {
    let server = &valid.spec.server;
    let mut pod_labels = common_labels(valid);
    if matches!(valid.identity, Identity::Entra { .. }) {
        pod_labels.insert(workload_identity::USE_LABEL.to_owned(), "true".to_owned());
    }
    let mut annotations = server.pod_annotations.clone().unwrap_or_default();
    annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), config_hash.to_owned());

    let mut volumes = vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("16Mi".to_owned())),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "config".to_owned(),
            mount_path: CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..Default::default()
        },
    ];
    if let Identity::Password { secret_name, .. } = &valid.identity {
        volumes.push(Volume {
            name: "postgres-password".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name.clone()),
                items: Some(vec![KeyToPath {
                    key: PASSWORD_KEY.to_owned(),
                    path: PASSWORD_KEY.to_owned(),
                    ..Default::default()
                }]),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "postgres-password".to_owned(),
            mount_path: PASSWORD_DIR.to_owned(),
            read_only: Some(true),
            ..Default::default()
        });
    }

    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(
            server
                .image
                .clone()
                .unwrap_or_else(|| defaults.server_image.clone()),
        ),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        env: Some(server_env(valid, defaults)),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_owned()),
            container_port: PORT,
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        // The server listens at once; /healthz answers while it waits, unready, for its first
        // token and the database.
        startup_probe: Some(http_probe("/healthz", 2, 45)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        resources: Some(server.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    Deployment {
        metadata: meta(valid, name),
        spec: Some(DeploymentSpec {
            replicas: Some(server.replicas),
            revision_history_limit: Some(3),
            selector: selector(valid),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.to_owned()),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(NON_ROOT),
                        run_as_group: Some(NON_ROOT),
                        fs_group: Some(NON_ROOT),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    node_selector: server.node_selector.clone(),
                    tolerations: server.tolerations.clone(),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn network_policy(
    valid: &Valid,
    name: &str,
    policy: &pgmcp_crds::v1alpha1::NetworkPolicySpec,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(valid, name),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(valid)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: (!policy.from.is_empty()).then(|| policy.from.clone()),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(PORT)),
                    protocol: Some("TCP".to_owned()),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::controller::fetch::Inputs;
    use crate::controller::tests::binding;
    use crate::controller::validate::validate;

    fn defaults() -> Defaults {
        Defaults {
            postgres_scope: None,
            server_image: "ghcr.io/pgmcp/pgmcp-server:test".to_owned(),
            oidc_issuer: None,
            trust_bundle: None,
        }
    }

    /// What fetch reads for the examples: the admin Secret they name, and the telemetry
    /// headers Secret the tests here name.
    fn admin_inputs() -> Inputs {
        let secret = |keys: &[&str]| k8s_openapi::api::core::v1::Secret {
            string_data: Some(
                keys.iter()
                    .map(|k| ((*k).to_owned(), "x".to_owned()))
                    .collect(),
            ),
            ..Default::default()
        };
        Inputs {
            admin_secret: Some(secret(&["username", "password"])),
            telemetry_headers_secret: Some(secret(&["headers"])),
            ..Default::default()
        }
    }

    fn desired(
        file: &str,
        edit: impl FnOnce(&mut pgmcp_crds::v1alpha1::PostgresMcpBinding),
    ) -> Desired {
        let mut b = binding(file);
        edit(&mut b);
        let inputs = admin_inputs();
        build(&validate(&b, &inputs).unwrap(), &defaults())
    }

    fn to_json<T: serde::Serialize>(value: &T) -> Value {
        serde_json::to_value(value).unwrap()
    }

    fn labels() -> Value {
        json!({
            "app.kubernetes.io/component": "mcp-server",
            "app.kubernetes.io/instance": "shop",
            "app.kubernetes.io/managed-by": "pgmcp-operator",
            "app.kubernetes.io/name": "pgmcp-server",
            "app.kubernetes.io/part-of": "pgmcp"
        })
    }

    fn metadata() -> Value {
        json!({
            "labels": labels(),
            "name": "shop-mcp",
            "namespace": "agents",
            "ownerReferences": [{
                "apiVersion": "pgmcp.dev/v1alpha1",
                "controller": true,
                "kind": "PostgresMcpBinding",
                "name": "shop",
                "uid": "0f7c1a9e-0000-4000-8000-000000000001"
            }]
        })
    }

    fn probe(path: &str, period: i32, failures: i32) -> Value {
        json!({
            "failureThreshold": failures,
            "httpGet": {"path": path, "port": "http", "scheme": "HTTP"},
            "periodSeconds": period,
            "timeoutSeconds": 3
        })
    }

    #[test]
    fn password_mode_deployment_is_hardened_and_mounts_config_and_password() {
        let d = desired("password.yaml", |_| {});
        let hash = d
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone();
        assert_eq!(hash.len(), 16);
        assert_eq!(
            to_json(&d.deployment),
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": metadata(),
                "spec": {
                    "replicas": 1,
                    "revisionHistoryLimit": 3,
                    "selector": {"matchLabels": {
                        "app.kubernetes.io/instance": "shop",
                        "app.kubernetes.io/name": "pgmcp-server"
                    }},
                    "template": {
                        "metadata": {
                            "annotations": {"pgmcp.dev/config-hash": hash},
                            "labels": labels()
                        },
                        "spec": {
                            "automountServiceAccountToken": false,
                            "containers": [{
                                "args": ["--config", "/etc/pgmcp/config.json"],
                                "env": [
                                    {"name": "OTEL_SERVICE_NAME", "value": "pgmcp-server"},
                                    {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": "k8s.namespace.name=agents,pgmcp.binding=shop"}
                                ],
                                "image": "ghcr.io/pgmcp/pgmcp-server:test",
                                "livenessProbe": probe("/healthz", 10, 3),
                                "name": "mcp-server",
                                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                                "readinessProbe": probe("/readyz", 5, 2),
                                "resources": {
                                    "limits": {"memory": "256Mi"},
                                    "requests": {"cpu": "50m", "memory": "64Mi"}
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": true,
                                    "runAsNonRoot": true
                                },
                                "startupProbe": probe("/healthz", 2, 45),
                                "volumeMounts": [
                                    {"mountPath": "/etc/pgmcp", "name": "config", "readOnly": true},
                                    {"mountPath": "/tmp", "name": "tmp"},
                                    {"mountPath": "/var/run/secrets/pgmcp/postgres", "name": "postgres-password", "readOnly": true}
                                ]
                            }],
                            "securityContext": {
                                "fsGroup": 65532,
                                "runAsGroup": 65532,
                                "runAsNonRoot": true,
                                "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}
                            },
                            "serviceAccountName": "shop-mcp",
                            "volumes": [
                                {"configMap": {"name": "shop-mcp"}, "name": "config"},
                                {"emptyDir": {"sizeLimit": "16Mi"}, "name": "tmp"},
                                {"name": "postgres-password", "secret": {
                                    "defaultMode": 0o440,
                                    "items": [{"key": "password", "path": "password"}],
                                    "secretName": "shop-postgres"
                                }}
                            ]
                        }
                    }
                }
            })
        );
    }

    #[test]
    fn password_mode_config_names_the_role_the_password_file_and_the_grants() {
        let d = desired("password.yaml", |_| {});
        let config: Value =
            serde_json::from_str(&d.config_map.data.as_ref().unwrap()[CONFIG_KEY]).unwrap();
        assert_eq!(
            config,
            json!({
                "database": {
                    "host": "postgres.databases.svc.cluster.local",
                    "port": 5432,
                    "dbname": "shop",
                    "user": "shop_mcp",
                    "sslMode": "prefer",
                    "passwordFile": "/var/run/secrets/pgmcp/postgres/password",
                    "poolSize": 8
                },
                "scope": {"grants": [{"schema": "public", "tables": ["*"]}]},
                "limits": {"maxRows": 1000, "maxBytes": 1048576, "statementTimeoutMs": 15000, "discoveryMaxBytes": 16384},
                "http": {
                    "listen": "0.0.0.0:8080",
                    "allowedHosts": ["shop-mcp", "shop-mcp.agents", "shop-mcp.agents.svc", "shop-mcp.agents.svc.cluster.local"],
                    "allowedOrigins": []
                },
                "auth": {"insecureAllowUnauthenticated": true},
                "audit": {"statements": "full", "binding": "agents/shop"}
            })
        );
        // The server parses what the operator writes.
        let _: pgmcp_crds::config::ServerConfig =
            serde_json::from_value(config).expect("the server accepts the config");
        assert_eq!(to_json(&d.config_map)["metadata"], metadata());
        assert_eq!(d.endpoint, "http://shop-mcp.agents.svc:8080/mcp");
        assert!(
            d.pod_disruption_budget.is_none(),
            "one replica needs no PDB"
        );
        assert!(d.network_policy.is_none());
    }

    #[test]
    fn a_configured_postgres_scope_reaches_servers_that_sign_in_with_entra_only() {
        let scope = "https://ossrdbms-aad.database.usgovcloudapi.net/.default";
        let scoped = Defaults {
            postgres_scope: Some(scope.to_owned()),
            ..defaults()
        };
        let entra = validate(&binding("azure-entra.yaml"), &Inputs::default()).unwrap();
        assert_eq!(
            server_config(&entra, &scoped)
                .database
                .token_scope
                .as_deref(),
            Some(scope)
        );
        assert_eq!(
            server_config(&entra, &defaults()).database.token_scope,
            None
        );
        let password = validate(&binding("password.yaml"), &admin_inputs()).unwrap();
        assert_eq!(server_config(&password, &scoped).database.token_scope, None);
    }

    #[test]
    fn security_definer_functions_the_binding_allows_reach_the_server_config() {
        let d = desired("password.yaml", |b| {
            b.spec.access.functions = vec![pgmcp_crds::v1alpha1::AllowedFunction {
                schema: "public".to_owned(),
                name: "order_total".to_owned(),
            }];
        });
        let config: Value =
            serde_json::from_str(&d.config_map.data.as_ref().unwrap()[CONFIG_KEY]).unwrap();
        assert_eq!(
            config["scope"],
            json!({
                "grants": [{"schema": "public", "tables": ["*"]}],
                "functions": [{"schema": "public", "name": "order_total"}]
            })
        );
    }

    /// Two caller classes and no default class, as a binding that serves only known callers.
    pub(crate) fn with_callers(b: &mut pgmcp_crds::v1alpha1::PostgresMcpBinding) {
        let callers = json!([
            {
                "name": "support",
                "match": {"appRoles": ["Support.Read"], "groups": ["33333333-3333-3333-3333-333333333333"]},
                "grants": [{"schema": "public", "tables": ["customers", "orders"]}],
                "functions": [{"schema": "public", "name": "order_total"}]
            },
            {
                "name": "finance",
                "match": {"objectIds": ["44444444-4444-4444-4444-444444444444"], "appIds": ["55555555-5555-5555-5555-555555555555"]},
                "grants": [{"schema": "sales", "tables": ["*"]}],
                "defaultPrivileges": false
            }
        ]);
        b.spec.access.callers = serde_json::from_value(callers).unwrap();
        b.spec.access.grants = Vec::new();
    }

    #[test]
    fn caller_classes_reach_the_server_config_in_spec_order_with_their_roles() {
        let d = desired("azure-entra.yaml", with_callers);
        let config: Value =
            serde_json::from_str(&d.config_map.data.as_ref().unwrap()[CONFIG_KEY]).unwrap();
        assert_eq!(
            config["scope"],
            json!({
                "grants": [],
                "callers": [
                    {
                        "name": "support",
                        "role": "inventory-mcp__support",
                        "match": {"appRoles": ["Support.Read"], "groups": ["33333333-3333-3333-3333-333333333333"]},
                        "grants": [{"schema": "public", "tables": ["customers", "orders"]}],
                        "functions": [{"schema": "public", "name": "order_total"}]
                    },
                    {
                        "name": "finance",
                        "role": "inventory-mcp__finance",
                        "match": {"objectIds": ["44444444-4444-4444-4444-444444444444"], "appIds": ["55555555-5555-5555-5555-555555555555"]},
                        "grants": [{"schema": "sales", "tables": ["*"]}]
                    }
                ]
            })
        );
        // What the server reads back is what was meant.
        let parsed: ServerConfig =
            serde_json::from_str(&d.config_map.data.as_ref().unwrap()[CONFIG_KEY]).unwrap();
        assert_eq!(parsed.scope.callers[1].role, "inventory-mcp__finance");
    }

    #[test]
    fn entra_mode_wires_workload_identity_into_the_service_account_pods_and_config() {
        let d = desired("azure-entra-foundry.yaml", |_| {});
        let sa = to_json(&d.service_account);
        assert_eq!(
            sa["metadata"]["annotations"],
            json!({
                "azure.workload.identity/client-id": "11111111-1111-1111-1111-111111111111",
                "azure.workload.identity/tenant-id": "22222222-2222-2222-2222-222222222222"
            })
        );
        assert_eq!(sa["automountServiceAccountToken"], json!(false));
        let pod = to_json(&d.deployment)["spec"]["template"].clone();
        assert_eq!(
            pod["metadata"]["labels"]["azure.workload.identity/use"],
            json!("true")
        );
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert!(
            volumes.iter().all(|v| v.get("secret").is_none()),
            "no secret in Entra mode: {volumes:?}"
        );
        let config: Value =
            serde_json::from_str(&d.config_map.data.as_ref().unwrap()[CONFIG_KEY]).unwrap();
        assert_eq!(
            config["database"],
            json!({
                "host": "contoso.postgres.database.azure.com",
                "port": 5432,
                "dbname": "sales",
                "user": "sales-mcp",
                "sslMode": "verify-full",
                "workloadIdentity": true,
                "poolSize": 8
            })
        );
        assert_eq!(
            config["auth"],
            json!({"entra": {
                "tenantId": "22222222-2222-2222-2222-222222222222",
                "audience": "44444444-4444-4444-4444-444444444444",
                "requiredRoles": ["MCP.Read"],
                "authorityHost": "https://login.microsoftonline.com"
            }})
        );
        assert_eq!(config["http"]["allowedHosts"][4], json!("mcp.contoso.com"));
        assert_eq!(
            config["http"]["publicUrl"],
            json!("https://mcp.contoso.com/agents/sales/mcp")
        );
    }

    #[test]
    fn more_than_one_replica_gets_a_disruption_budget() {
        let d = desired("azure-entra-foundry.yaml", |_| {});
        let pdb = to_json(d.pod_disruption_budget.as_ref().unwrap());
        assert_eq!(
            pdb["spec"],
            json!({
                "maxUnavailable": 1,
                "selector": {"matchLabels": {
                    "app.kubernetes.io/instance": "sales",
                    "app.kubernetes.io/name": "pgmcp-server"
                }}
            })
        );
    }

    #[test]
    fn service_exposes_the_mcp_port_by_name() {
        let d = desired("password.yaml", |_| {});
        assert_eq!(
            to_json(&d.service),
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": metadata(),
                "spec": {
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": "http"}],
                    "selector": {
                        "app.kubernetes.io/instance": "shop",
                        "app.kubernetes.io/name": "pgmcp-server"
                    }
                }
            })
        );
    }

    #[test]
    fn network_policy_admits_only_the_mcp_port_from_the_listed_peers() {
        let d = desired("password.yaml", |b| {
            b.spec.server.network_policy = Some(
                serde_json::from_value(json!({
                    "from": [{"namespaceSelector": {"matchLabels": {"team": "agents"}}}]
                }))
                .unwrap(),
            );
        });
        assert_eq!(
            to_json(d.network_policy.as_ref().unwrap())["spec"],
            json!({
                "ingress": [{
                    "from": [{"namespaceSelector": {"matchLabels": {"team": "agents"}}}],
                    "ports": [{"port": 8080, "protocol": "TCP"}]
                }],
                "podSelector": {"matchLabels": {
                    "app.kubernetes.io/instance": "shop",
                    "app.kubernetes.io/name": "pgmcp-server"
                }},
                "policyTypes": ["Ingress"]
            })
        );
    }

    #[test]
    fn a_config_change_changes_the_pod_template_hash_and_nothing_else_does() {
        let hash = |d: &Desired| {
            d.deployment
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        let base = desired("password.yaml", |_| {});
        assert_eq!(
            hash(&base),
            hash(&desired("password.yaml", |_| {})),
            "stable"
        );
        let more_rows = desired("password.yaml", |b| b.spec.server.limits.max_rows = 50);
        assert_ne!(hash(&base), hash(&more_rows));
        let other_schema = desired("password.yaml", |b| {
            b.spec.access.grants[0].schema = "sales".to_owned()
        });
        assert_ne!(hash(&base), hash(&other_schema));
        let scaled = desired("password.yaml", |b| b.spec.server.replicas = 3);
        assert_eq!(hash(&base), hash(&scaled), "replicas are not config");
    }

    #[test]
    fn a_trust_bundle_reaches_every_server_and_a_new_one_rolls_the_pods() {
        let with_bundle = |pem: &str| {
            let mut b = binding("azure-entra.yaml");
            b.spec.postgres.ssl_mode = pgmcp_crds::v1alpha1::SslMode::VerifyFull;
            let defaults = Defaults {
                trust_bundle: Some(crate::settings::TrustBundle {
                    path: "/etc/pgmcp/trust/ca-certificates.crt".into(),
                    pem: pem.into(),
                    certificates: 1,
                }),
                ..defaults()
            };
            build(&validate(&b, &Inputs::default()).unwrap(), &defaults)
        };
        let hash = |d: &Desired| {
            to_json(&d.deployment)["spec"]["template"]["metadata"]["annotations"]
                [CONFIG_HASH_ANNOTATION]
                .clone()
        };
        let config = |d: &Desired| -> Value {
            serde_json::from_str(&d.config_map.data.as_ref().unwrap()[CONFIG_KEY]).unwrap()
        };

        let first = with_bundle("-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n");
        let data = first.config_map.data.as_ref().unwrap();
        assert_eq!(
            data[TRUST_BUNDLE_KEY],
            "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n"
        );
        // The file the ConfigMap volume shows is the server's CA bundle for HTTPS and for
        // sslmode=verify-full.
        assert_eq!(
            container_env(&first)[0],
            json!({"name": "SSL_CERT_FILE", "value": "/etc/pgmcp/ca-certificates.crt"})
        );
        assert_eq!(
            config(&first)["database"]["sslRootCert"],
            json!("/etc/pgmcp/ca-certificates.crt")
        );
        let second = with_bundle("-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n");
        assert_ne!(hash(&first), hash(&second), "a new bundle rolls the pods");
        assert_eq!(config(&first), config(&second));

        // Without one: nothing of it, and the hash the config alone gives (no rollout when an
        // operator without a bundle is upgraded).
        let mut b = binding("azure-entra.yaml");
        b.spec.postgres.ssl_mode = pgmcp_crds::v1alpha1::SslMode::VerifyFull;
        let plain = build(&validate(&b, &Inputs::default()).unwrap(), &defaults());
        let data = plain.config_map.data.as_ref().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), [CONFIG_KEY]);
        assert!(
            !container_env(&plain).to_string().contains("SSL_CERT_FILE"),
            "{}",
            container_env(&plain)
        );
        assert_eq!(config(&plain)["database"].get("sslRootCert"), None);
        assert_eq!(
            hash(&plain),
            json!(hex_prefix(&Sha256::digest(data[CONFIG_KEY].as_bytes()), 16))
        );
    }

    fn container_env(d: &Desired) -> Value {
        to_json(&d.deployment)["spec"]["template"]["spec"]["containers"][0]["env"].clone()
    }

    fn with_telemetry(b: &mut pgmcp_crds::v1alpha1::PostgresMcpBinding, telemetry: Value) {
        b.spec.server.telemetry = Some(serde_json::from_value(telemetry).unwrap());
    }

    #[test]
    fn without_telemetry_the_server_gets_its_name_and_resource_attributes_only() {
        let d = desired("password.yaml", |_| {});
        assert_eq!(
            container_env(&d),
            json!([
                {"name": "OTEL_SERVICE_NAME", "value": "pgmcp-server"},
                {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": "k8s.namespace.name=agents,pgmcp.binding=shop"}
            ])
        );
    }

    #[test]
    fn telemetry_renders_the_standard_otel_variables_with_headers_from_the_secret() {
        let d = desired("password.yaml", |b| {
            with_telemetry(
                b,
                json!({
                    "otlpEndpoint": "https://otlp.example.com:4318",
                    "headersSecretRef": {"name": "otel-headers", "key": "headers"},
                    "samplingPercent": 25,
                    "resourceAttributes": {
                        "deployment.environment.name": "production",
                        "team": "data, platform=ops"
                    }
                }),
            );
        });
        assert_eq!(
            container_env(&d),
            json!([
                {"name": "OTEL_SERVICE_NAME", "value": "pgmcp-server"},
                {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": "k8s.namespace.name=agents,pgmcp.binding=shop,deployment.environment.name=production,team=data%2C%20platform%3Dops"},
                {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "https://otlp.example.com:4318"},
                {"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": "http/protobuf"},
                {"name": "OTEL_EXPORTER_OTLP_HEADERS", "valueFrom": {"secretKeyRef": {
                    "name": "otel-headers", "key": "headers", "optional": false
                }}},
                {"name": "OTEL_TRACES_SAMPLER", "value": "parentbased_traceidratio"},
                {"name": "OTEL_TRACES_SAMPLER_ARG", "value": "0.25"}
            ])
        );
        // Telemetry is the pod's environment, not the server's config.
        let config: Value =
            serde_json::from_str(&d.config_map.data.as_ref().unwrap()[CONFIG_KEY]).unwrap();
        assert!(config.get("telemetry").is_none(), "{config}");
    }

    #[test]
    fn the_telemetry_example_exports_a_quarter_of_its_traces_and_redacts_statements() {
        let d = desired("telemetry.yaml", |_| {});
        let env = container_env(&d);
        assert_eq!(
            env[1]["value"],
            "k8s.namespace.name=agents,pgmcp.binding=support,\
             deployment.environment.name=production,team=support-tools"
        );
        assert_eq!(
            env[6],
            json!({"name": "OTEL_TRACES_SAMPLER_ARG", "value": "0.25"})
        );
        let config: Value =
            serde_json::from_str(&d.config_map.data.as_ref().unwrap()[CONFIG_KEY]).unwrap();
        assert_eq!(config["audit"]["statements"], "redacted");
        assert!(config.get("results").is_none(), "framing on is the default");
    }

    #[test]
    fn full_sampling_sets_parent_based_always_on_and_no_headers_without_a_secret() {
        let d = desired("password.yaml", |b| {
            with_telemetry(b, json!({"otlpEndpoint": "http://otel-collector:4318"}));
        });
        let env = container_env(&d);
        let names: Vec<&str> = env
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "OTEL_SERVICE_NAME",
                "OTEL_RESOURCE_ATTRIBUTES",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "OTEL_TRACES_SAMPLER"
            ]
        );
        assert_eq!(env[4]["value"], "parentbased_always_on");
    }

    #[test]
    fn sampling_percentages_become_exact_ratios() {
        assert_eq!(sampler_ratio(0).as_deref(), Some("0.00"));
        assert_eq!(sampler_ratio(1).as_deref(), Some("0.01"));
        assert_eq!(sampler_ratio(7).as_deref(), Some("0.07"));
        assert_eq!(sampler_ratio(25).as_deref(), Some("0.25"));
        assert_eq!(sampler_ratio(50).as_deref(), Some("0.50"));
        assert_eq!(sampler_ratio(99).as_deref(), Some("0.99"));
        assert_eq!(sampler_ratio(100), None);
        // Outside the CRD's bounds (a binding stored under an older CRD): clamped.
        assert_eq!(sampler_ratio(-5).as_deref(), Some("0.00"));
        assert_eq!(sampler_ratio(250), None);
        for percent in 0..100 {
            let ratio: f64 = sampler_ratio(percent).unwrap().parse().unwrap();
            assert!(
                (ratio * 100.0 - f64::from(percent)).abs() < 1e-9,
                "{percent}"
            );
        }
    }

    #[test]
    fn resource_attribute_text_outside_baggage_octets_is_percent_encoded() {
        assert_eq!(
            encode_attribute("deployment.environment.name"),
            "deployment.environment.name"
        );
        assert_eq!(encode_attribute("a,b=c"), "a%2Cb%3Dc");
        assert_eq!(encode_attribute("50% off"), "50%25%20off");
        assert_eq!(encode_attribute("Zürich"), "Z%C3%BCrich");
        assert_eq!(encode_attribute("say \"hi\";\\"), "say%20%22hi%22%3B%5C");
        assert_eq!(encode_attribute("$(HOME)"), "%24(HOME)");
        assert_eq!(encode_attribute("tab\there"), "tab%09here");
        assert_eq!(encode_attribute("a/b:c@d[e]~!#&'*+"), "a/b:c@d[e]~!#&'*+");
    }

    #[test]
    fn results_and_audit_reach_the_server_config() {
        let d = desired("password.yaml", |b| {
            b.spec.server.results.untrusted_data_framing = false;
            b.spec.server.audit.statements = pgmcp_crds::v1alpha1::AuditStatements::Redacted;
        });
        let config: Value =
            serde_json::from_str(&d.config_map.data.as_ref().unwrap()[CONFIG_KEY]).unwrap();
        assert_eq!(config["results"], json!({"untrustedDataFraming": false}));
        assert_eq!(
            config["audit"],
            json!({"statements": "redacted", "binding": "agents/shop"})
        );
        let parsed: ServerConfig = serde_json::from_value(config).unwrap();
        assert_eq!(
            parsed.audit.statements,
            pgmcp_crds::config::AuditStatements::Redacted
        );
        for (statements, text) in [
            (
                pgmcp_crds::v1alpha1::AuditStatements::Fingerprint,
                "fingerprint",
            ),
            (pgmcp_crds::v1alpha1::AuditStatements::Full, "full"),
        ] {
            let valid = {
                let mut b = binding("password.yaml");
                b.spec.server.audit.statements = statements;
                validate(&b, &admin_inputs()).unwrap()
            };
            assert_eq!(
                server_config(&valid, &defaults()).audit.statements.as_str(),
                text
            );
        }
        // Framing on is the default, left out of the file (password_mode_config_… compares
        // the whole file).
        let default = server_config(
            &validate(&binding("password.yaml"), &admin_inputs()).unwrap(),
            &defaults(),
        );
        assert!(default.results.untrusted_data_framing);
        assert_eq!(
            default.audit.statements,
            pgmcp_crds::config::AuditStatements::Full
        );
    }

    #[test]
    fn a_telemetry_change_rolls_the_pods_without_touching_the_config() {
        let template = |d: &Desired| to_json(&d.deployment)["spec"]["template"].clone();
        let base = desired("password.yaml", |_| {});
        let traced = desired("password.yaml", |b| {
            with_telemetry(b, json!({"otlpEndpoint": "http://otel-collector:4318"}));
        });
        let sampled = desired("password.yaml", |b| {
            with_telemetry(
                b,
                json!({"otlpEndpoint": "http://otel-collector:4318", "samplingPercent": 10}),
            );
        });
        assert_ne!(template(&base), template(&traced));
        assert_ne!(template(&traced), template(&sampled));
        assert_eq!(base.config_map, traced.config_map);
        let redacted = desired("password.yaml", |b| {
            b.spec.server.audit.statements = pgmcp_crds::v1alpha1::AuditStatements::Redacted;
        });
        assert_ne!(
            template(&base)["metadata"]["annotations"][CONFIG_HASH_ANNOTATION],
            template(&redacted)["metadata"]["annotations"][CONFIG_HASH_ANNOTATION],
            "audit is config: the hash changes"
        );
    }

    #[test]
    fn url_hosts_drop_scheme_port_and_path() {
        assert_eq!(
            url_host("https://mcp.contoso.com/agents/mcp"),
            Some("mcp.contoso.com")
        );
        assert_eq!(url_host("http://mcp.local:8443"), Some("mcp.local"));
        assert_eq!(url_host("mcp.contoso.com"), None);
    }
}
