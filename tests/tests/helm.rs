//! The Helm chart (charts/pgmcp) and manifests/install.yaml as users meet them, with the real
//! helm 4 and kubectl against the real apiserver: the chart lints strictly; every values file
//! (defaults and charts/pgmcp/ci/*.yaml) renders objects the apiserver accepts; the values
//! schema refuses bad values by name; `helm install` creates the CRD, the operator and its RBAC,
//! and `helm uninstall` removes them again; and the operator binary, running with nothing but a
//! token of the chart's ServiceAccount and the arguments of the chart's Deployment, reconciles an
//! example binding — while that ServiceAccount cannot list Secrets, nor read them outside the
//! namespaces it watches.
//!
//! There is no kubelet, so the chart's pods never run: the operator runs as a local process
//! with the pod's credentials and arguments instead.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams};
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::bindings::{apply_password_example, condition};
use pgmcp_tests::operator::Operator;
use pgmcp_tests::{TestEnv, TestNamespace, eventually, paths};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(45);
const BINDING: &str = "shop";

fn chart() -> PathBuf {
    paths::workspace_root().join("charts").join("pgmcp")
}

/// The values files of charts/pgmcp/ci/, sorted.
fn ci_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "charts/pgmcp/ci/ holds the values files: {files:?}"
    );
    files
}

/// Runs `command`; returns whether it succeeded and its stdout and stderr together.
fn run(command: &mut Command) -> (bool, String) {
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn run_ok(command: &mut Command) -> String {
    let (ok, text) = run(command);
    assert!(ok, "{command:?} failed:\n{text}");
    text
}

/// helm with its own cache/config directories (nothing read from or written to $HOME), and
/// optionally pointed at a control plane.
struct Helm {
    home: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    fn new(kubeconfig: Option<&Path>) -> Self {
        paths::require(&paths::helm(), "install it with `make tools`").unwrap();
        Self {
            home: tempfile::Builder::new()
                .prefix("pgmcp-helm-")
                .tempdir()
                .unwrap(),
            kubeconfig: kubeconfig.map(Path::to_path_buf),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(paths::helm());
        for (var, dir) in [
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ] {
            command.env(var, self.home.path().join(dir));
        }
        if let Some(kubeconfig) = &self.kubeconfig {
            command.arg("--kubeconfig").arg(kubeconfig);
        }
        command
    }

    /// `helm template` of the chart; `args` may add `-f`, `--set`, `--include-crds`.
    fn template(&self, release: &str, namespace: &str, args: &[&str]) -> (bool, String) {
        let mut command = self.command();
        command
            .args(["template", release])
            .arg(chart())
            .args(["--namespace", namespace])
            .args(args);
        let out = command.output().unwrap();
        if out.status.success() {
            (true, String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            (false, String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// The objects of a multi-document YAML stream.
fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap()
        .into_iter()
        .filter(|d| d.is_object())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    kinds.sort();
    kinds
}

/// A minimal ServiceMonitor CRD (monitoring.coreos.com/v1), so the optional ServiceMonitor is
/// checked by a real apiserver too: its schema declares the fields of the Prometheus Operator's
/// ServiceMonitor the chart sets (same names and types) and nothing else, so a misspelt or
/// misplaced field is refused as an unknown field.
const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: { kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor }
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [selector]
              properties:
                selector:
                  type: object
                  properties:
                    matchLabels: { type: object, additionalProperties: { type: string } }
                namespaceSelector:
                  type: object
                  properties:
                    any: { type: boolean }
                    matchNames: { type: array, items: { type: string } }
                endpoints:
                  type: array
                  items:
                    type: object
                    properties:
                      port: { type: string }
                      path: { type: string }
                      interval: { type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$' }
                      scrapeTimeout: { type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$' }
"#;

async fn install_service_monitor_crd(env: &TestEnv) {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), SERVICE_MONITOR_CRD).unwrap();
    run_ok(env.kubectl().arg("apply").arg("-f").arg(file.path()));
    run_ok(env.kubectl().args([
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/servicemonitors.monitoring.coreos.com",
    ]));
}

/// `kubectl apply --dry-run=server` of a rendered stream: every object goes through the
/// apiserver's validation (schemas, unknown fields refused) without being stored.
fn dry_run(env: &TestEnv, yaml: &str) -> String {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    run_ok(
        env.kubectl()
            .args(["apply", "--dry-run=server", "-f"])
            .arg(file.path()),
    )
}

/// Creates namespace `name` unless it exists.
fn ensure_namespace(env: &TestEnv, name: &str) {
    let (ok, text) = run(env.kubectl().args(["create", "namespace", name]));
    assert!(ok || text.contains("AlreadyExists"), "{text}");
}

fn service_account_kubeconfig(env: &TestEnv, namespace: &str, name: &str, dir: &Path) -> PathBuf {
    env.service_account_kubeconfig(namespace, name, dir)
        .unwrap()
}

/// `kubectl auth can-i` as ServiceAccount `sa_namespace/sa`: `namespace` None means
/// cluster-wide (`--all-namespaces`).
fn can_i(
    env: &TestEnv,
    sa_namespace: &str,
    sa: &str,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let mut command = env.kubectl();
    command
        .args(["auth", "can-i", verb, resource])
        .arg(format!("--as=system:serviceaccount:{sa_namespace}:{sa}"));
    match namespace {
        Some(ns) => command.args(["--namespace", ns]),
        None => command.arg("--all-namespaces"),
    };
    let (_, text) = run(&mut command);
    match text.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i {verb} {resource}: {other}"),
    }
}

/// The operator's container arguments from the Deployment the chart installed.
async fn deployment_args(client: &Client, namespace: &str, name: &str) -> Vec<String> {
    pgmcp_tests::podrunner::container_args(client, namespace, name)
        .await
        .unwrap()
}

/// Waits until the binding has its database principal (`DatabaseReady=True`) and its server
/// deployed (`ServerAvailable=False/WaitingForPods`: there is no kubelet to start the pods), so
/// every step of a reconcile ran with the operator's credentials: the admin Secret read, the
/// password Secret created and patched, the children applied, Events and status written. On
/// timeout, fails with the operator's log.
async fn wait_reconciled(api: &Api<PostgresMcpBinding>, operator: &Operator) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let binding = api.get(BINDING).await.unwrap();
        let has = |type_: &str, status: &str, reason: Option<&str>| {
            condition(&binding, type_)
                .is_some_and(|c| c.status == status && reason.is_none_or(|r| c.reason == r))
        };
        if has("ServerAvailable", "False", Some("WaitingForPods"))
            && has("DatabaseReady", "True", None)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "binding not reconciled after {WAIT:?}: {:?}\noperator log:\n{}",
            binding.status,
            log_tail(operator)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The password Secret the operator generated for the binding, owned by it.
async fn assert_password_secret(ns: &TestNamespace) {
    let secret: Secret = ns.api().get(&format!("{BINDING}-postgres")).await.unwrap();
    assert!(
        secret
            .metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|o| o.kind == "PostgresMcpBinding" && o.name == BINDING),
        "the password Secret is owned by the binding"
    );
}

/// The last lines of the operator's log, for failure messages.
fn log_tail(operator: &Operator) -> String {
    let log = operator.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Fails when the apiserver refused the operator anything (RBAC too narrow).
fn assert_nothing_forbidden(operator: &Operator) {
    let log = operator.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .collect();
    assert!(
        refused.is_empty(),
        "the operator was refused something:\n{}",
        refused.join("\n")
    );
}

async fn crd_established(client: &Client) -> bool {
    Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(pgmcp_crds::CRD_NAME)
        .await
        .ok()
        .flatten()
        .and_then(|crd| crd.status?.conditions)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

#[tokio::test]
async fn the_chart_lints_strictly_with_default_and_ci_values() {
    let helm = Helm::new(None);
    let (ok, text) = run(helm.command().args(["lint", "--strict"]).arg(chart()));
    assert!(ok && text.contains("0 chart(s) failed"), "{text}");
    for values in ci_values() {
        let (ok, text) = run(helm
            .command()
            .args(["lint", "--strict"])
            .arg(chart())
            .arg("-f")
            .arg(&values));
        assert!(
            ok && text.contains("0 chart(s) failed"),
            "{}: {text}",
            values.display()
        );
    }
}

#[tokio::test]
async fn bad_values_are_refused_by_the_schema_naming_the_value() {
    let helm = Helm::new(None);
    let dir = tempfile::tempdir().unwrap();
    for (values, expected) in [
        (
            "replicaCount: \"2\"\n",
            "/replicaCount': got string, want integer",
        ),
        (
            "replicas: 2\n",
            "additional properties 'replicas' not allowed",
        ),
        (
            "image:\n  tag: 1.0\n",
            "/image/tag': got number, want string",
        ),
        (
            "workloadIdentity:\n  enabled: true\n",
            "/workloadIdentity/clientId",
        ),
        ("watchNamespaces: [Agents]\n", "/watchNamespaces/0"),
        ("logFormat: yaml\n", "/logFormat"),
        ("resync: 5\n", "/resync': got number, want string"),
        (
            "telemetry:\n  otlpEndpoint: otel-collector:4318\n",
            "/telemetry/otlpEndpoint",
        ),
        (
            "telemetry:\n  otlpEndpoint: http://otel:4318\n  headersSecret:\n    name: otel-headers\n",
            "/telemetry/headersSecret/key",
        ),
    ] {
        let file = dir.path().join("values.yaml");
        std::fs::write(&file, values).unwrap();
        let (ok, text) = helm.template("pgmcp", "pgmcp-system", &["-f", file.to_str().unwrap()]);
        assert!(!ok, "accepted {values:?}");
        assert!(
            text.contains("values don't meet the specifications of the schema")
                && text.contains(expected),
            "{values:?} refused without naming it ({expected}):\n{text}"
        );
    }
    // A plain mistake the schema cannot see is caught by the chart itself.
    let (ok, text) = helm.template(
        "pgmcp",
        "pgmcp-system",
        &["--set", "leaderElection.enabled=false"],
    );
    assert!(
        !ok && text.contains("replicaCount > 1 needs leaderElection.enabled"),
        "{text}"
    );
    let (ok, text) = helm.template(
        "pgmcp",
        "pgmcp-system",
        &[
            "--set",
            "telemetry.headersSecret.name=otel-headers,telemetry.headersSecret.key=headers",
        ],
    );
    assert!(
        !ok && text.contains("telemetry.headersSecret needs telemetry.otlpEndpoint"),
        "{text}"
    );
}

#[tokio::test]
async fn every_values_file_renders_objects_the_apiserver_accepts() {
    let env = TestEnv::shared();
    let ns = env.namespace("helm-render").await.unwrap();
    let helm = Helm::new(None);
    install_service_monitor_crd(env).await;

    // Defaults: cluster mode, two replicas with leader election, a PDB, no ServiceMonitor.
    let (ok, yaml) = helm.template("pgmcp", &ns.name, &[]);
    assert!(ok, "{yaml}");
    let objects = documents(&yaml);
    let cluster = format!("pgmcp-operator-{}", ns.name);
    assert_eq!(
        kinds(&objects),
        [
            format!("ClusterRole/{cluster}"),
            format!("ClusterRole/{cluster}-crd"),
            format!("ClusterRoleBinding/{cluster}"),
            format!("ClusterRoleBinding/{cluster}-crd"),
            "Deployment/pgmcp-operator".to_owned(),
            "PodDisruptionBudget/pgmcp-operator".to_owned(),
            "Role/pgmcp-operator-leader-election".to_owned(),
            "RoleBinding/pgmcp-operator-leader-election".to_owned(),
            "Service/pgmcp-operator-metrics".to_owned(),
            "ServiceAccount/pgmcp-operator".to_owned(),
        ]
    );
    let deployment = find(&objects, "Deployment", "pgmcp-operator").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "ghcr.io/pgmcp/pgmcp-operator:0.1.0");
    assert_eq!(
        pod.get("volumes"),
        None,
        "no trust bundle by default: {pod}"
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for expected in [
        "--server-image=ghcr.io/pgmcp/pgmcp-server:0.1.0",
        "--leader-election=true",
        &format!("--lease-namespace={}", ns.name),
        "--metrics-listen=0.0.0.0:8081",
    ] {
        assert!(args.contains(&expected), "{expected} in {args:?}");
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "{args:?}"
    );
    let env_names: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env_names.starts_with(&["POD_NAME", "POD_NAMESPACE"]));
    assert_eq!(
        container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["ports"][0]["containerPort"], 8081);
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    dry_run(env, &yaml);

    // Each ci values file: what it is for is in the output, and the apiserver accepts it.
    for values in ci_values() {
        let file = values.file_name().unwrap().to_string_lossy().into_owned();
        let parsed: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&values).unwrap()).unwrap();
        for watched in parsed["watchNamespaces"].as_array().into_iter().flatten() {
            ensure_namespace(env, watched.as_str().unwrap());
        }
        let (ok, yaml) = helm.template("pgmcp", &ns.name, &["-f", values.to_str().unwrap()]);
        assert!(ok, "{file}: {yaml}");
        let objects = documents(&yaml);
        match file.as_str() {
            "namespaced-values.yaml" => {
                // No cluster-wide access to bindings or Secrets: a Role per watched namespace.
                assert!(find(&objects, "ClusterRole", &cluster).is_none(), "{file}");
                assert!(
                    find(&objects, "ClusterRole", &format!("{cluster}-crd")).is_some(),
                    "{file}"
                );
                for watched in ["agents-a", "agents-b"] {
                    assert!(
                        objects
                            .iter()
                            .any(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == watched),
                        "{file}: no Role in {watched}"
                    );
                }
            }
            "workload-identity-values.yaml" => {
                let sa = find(&objects, "ServiceAccount", "pgmcp-operator").unwrap();
                let annotations = &sa["metadata"]["annotations"];
                assert_eq!(
                    annotations["azure.workload.identity/client-id"],
                    "11111111-2222-3333-4444-555555555555"
                );
                assert_eq!(
                    annotations["azure.workload.identity/tenant-id"],
                    "66666666-7777-8888-9999-000000000000"
                );
                let deployment = find(&objects, "Deployment", "pgmcp-operator").unwrap();
                assert_eq!(
                    deployment["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"],
                    "true"
                );
                assert!(
                    find(&objects, "PodDisruptionBudget", "pgmcp-operator").is_none(),
                    "no PDB for one replica"
                );
                // The trust bundle: mounted, SSL_CERT_FILE for the operator's HTTPS calls, and
                // --trust-bundle for its servers and its verify-full connections.
                let pod = &deployment["spec"]["template"]["spec"];
                assert_eq!(
                    pod["volumes"],
                    json!([{"name": "trust-bundle", "configMap": {
                        "name": "corporate-roots",
                        "items": [{"key": "ca-certificates.crt", "path": "ca-certificates.crt"}]
                    }}])
                );
                let container = &pod["containers"][0];
                assert_eq!(
                    container["volumeMounts"],
                    json!([{"name": "trust-bundle", "mountPath": "/etc/pgmcp/trust", "readOnly": true}])
                );
                let bundle = "/etc/pgmcp/trust/ca-certificates.crt";
                assert!(
                    container["env"]
                        .as_array()
                        .unwrap()
                        .contains(&json!({"name": "SSL_CERT_FILE", "value": bundle})),
                    "{container}"
                );
                assert!(
                    container["args"]
                        .as_array()
                        .unwrap()
                        .contains(&json!(format!("--trust-bundle={bundle}"))),
                    "{container}"
                );
            }
            "telemetry-values.yaml" => {
                let deployment = find(&objects, "Deployment", "pgmcp-operator").unwrap();
                let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
                    .as_array()
                    .unwrap();
                let var = |name: &str| {
                    env.iter()
                        .find(|e| e["name"] == name)
                        .unwrap_or_else(|| panic!("{file}: no {name} in {env:?}"))
                };
                assert_eq!(var("OTEL_SERVICE_NAME")["value"], "pgmcp-operator");
                assert_eq!(
                    var("OTEL_EXPORTER_OTLP_ENDPOINT")["value"],
                    "http://otel-collector.observability.svc:4318"
                );
                assert_eq!(var("OTEL_EXPORTER_OTLP_PROTOCOL")["value"], "http/protobuf");
                assert_eq!(
                    var("OTEL_RESOURCE_ATTRIBUTES")["value"],
                    format!("k8s.namespace.name={},k8s.pod.name=$(POD_NAME)", ns.name)
                );
                assert_eq!(
                    var("OTEL_EXPORTER_OTLP_HEADERS")["valueFrom"]["secretKeyRef"],
                    json!({"name": "otel-headers", "key": "headers"})
                );
            }
            "servicemonitor-values.yaml" => {
                let monitor = find(&objects, "ServiceMonitor", "pgmcp-operator").unwrap();
                assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
                assert_eq!(
                    monitor["metadata"]["labels"]["release"],
                    "kube-prometheus-stack"
                );
            }
            other => panic!("no expectations for ci values file {other}: add them here"),
        }
        dry_run(env, &yaml);
    }

    for watched in ["agents-a", "agents-b"] {
        let _ = run(env
            .kubectl()
            .args(["delete", "namespace", watched, "--wait=false"]));
    }

    // manifests/install.yaml is what the chart renders with default values (make
    // check-generated compares the bytes), and the apiserver accepts all of it.
    // The namespace as install.yaml labels it: pods must meet the restricted Pod Security
    // Standard, and the apiserver warns about a Deployment whose pods would not.
    ensure_namespace(env, "pgmcp-system");
    run_ok(env.kubectl().args([
        "label",
        "--overwrite",
        "namespace",
        "pgmcp-system",
        "pod-security.kubernetes.io/enforce=restricted",
    ]));
    let install = std::fs::read_to_string(
        paths::workspace_root()
            .join("manifests")
            .join("install.yaml"),
    )
    .unwrap();
    let objects = documents(&install);
    assert_eq!(objects[0]["kind"], "Namespace");
    assert!(find(&objects, "CustomResourceDefinition", pgmcp_crds::CRD_NAME).is_some());
    assert!(find(&objects, "Deployment", "pgmcp-operator").is_some());
    let text = dry_run(env, &install);
    assert!(
        text.contains("deployment.apps/pgmcp-operator created (server dry run)"),
        "{text}"
    );
    assert!(!text.contains("PodSecurity"), "{text}");
}

#[tokio::test]
async fn helm_install_into_an_empty_cluster_installs_the_crd_and_an_operator_that_works() {
    // A control plane of its own: this test removes and reinstalls the CRD every other test of
    // the shared one relies on.
    let env = TestEnv::start().await.unwrap();
    let env: &'static TestEnv = Box::leak(Box::new(env));
    let client = env.client().await.unwrap();
    Api::<CustomResourceDefinition>::all(client.clone())
        .delete(pgmcp_crds::CRD_NAME, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the CRD removed", WAIT, || async {
        Api::<CustomResourceDefinition>::all(client.clone())
            .get_opt(pgmcp_crds::CRD_NAME)
            .await
            .is_ok_and(|c| c.is_none())
    })
    .await;

    let helm = Helm::new(Some(env.kubeconfig()));
    let text = run_ok(
        helm.command()
            .args(["install", "pgmcp"])
            .arg(chart())
            .args(["--namespace", "pgmcp-system", "--create-namespace"]),
    );
    assert!(text.contains("STATUS: deployed"), "{text}");
    // NOTES.txt tells the user what to do next.
    assert!(
        text.contains("manifests/examples/password.yaml") && text.contains("kubectl get pgmcp"),
        "{text}"
    );
    eventually("the CRD Established", WAIT, || crd_established(&client)).await;
    let sa: ServiceAccount = Api::namespaced(client.clone(), "pgmcp-system")
        .get("pgmcp-operator")
        .await
        .unwrap();
    assert_eq!(
        sa.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "Helm"
    );
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    cluster_roles
        .get("pgmcp-operator-pgmcp-system")
        .await
        .unwrap();
    cluster_roles
        .get("pgmcp-operator-pgmcp-system-crd")
        .await
        .unwrap();

    // The operator as the pod would run it: its ServiceAccount's token, its Deployment's args.
    let args = deployment_args(&client, "pgmcp-system", "pgmcp-operator").await;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = service_account_kubeconfig(env, "pgmcp-system", "pgmcp-operator", dir.path());
    let operator = Operator::start_with_kubeconfig(&kubeconfig, "pgmcp-operator-0", &args)
        .await
        .unwrap();
    let ns = env.namespace("helm-cluster-mode").await.unwrap();
    let _db = apply_password_example(&ns).await;
    wait_reconciled(&ns.api(), &operator).await;
    assert_password_secret(&ns).await;
    assert_nothing_forbidden(&operator);

    // Least privilege, cluster-wide: it reads the Secret a binding names, never the list.
    let sa = |verb: &str, resource: &str, namespace: Option<&str>| {
        can_i(
            env,
            "pgmcp-system",
            "pgmcp-operator",
            verb,
            resource,
            namespace,
        )
    };
    assert!(sa("get", "secrets", Some(&ns.name)));
    assert!(!sa("list", "secrets", None));
    assert!(!sa("watch", "secrets", Some(&ns.name)));
    assert!(!sa("list", "pods", None));
    assert!(!sa("delete", "customresourcedefinitions", None));
    assert!(!sa(
        "get",
        "customresourcedefinitions/servicemonitors.monitoring.coreos.com",
        None
    ));
    assert!(sa(
        "get",
        &format!("customresourcedefinitions/{}", pgmcp_crds::CRD_NAME),
        None
    ));
    assert!(!sa("create", "leases.coordination.k8s.io", Some(&ns.name)));
    assert!(!sa("create", "clusterrolebindings", None));

    // helm uninstall removes what it installed; the CRD (and so every binding) stays, as Helm
    // does for crds/.
    drop(operator);
    let text = run_ok(
        helm.command()
            .args(["uninstall", "pgmcp", "--namespace", "pgmcp-system"]),
    );
    assert!(text.contains("uninstalled"), "{text}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "pgmcp-system");
    eventually("the release's objects removed", WAIT, || async {
        deployments
            .get_opt("pgmcp-operator")
            .await
            .is_ok_and(|d| d.is_none())
            && cluster_roles
                .get_opt("pgmcp-operator-pgmcp-system")
                .await
                .is_ok_and(|r| r.is_none())
    })
    .await;
    assert!(crd_established(&client).await);
    let bindings: Api<PostgresMcpBinding> = ns.api();
    assert!(bindings.get_opt(BINDING).await.unwrap().is_some());
    drop(ns);
    // The leaked control plane's processes stop with the test binary (lifelines).
}

#[tokio::test]
async fn in_namespaced_mode_the_operator_works_with_roles_only_and_cannot_read_other_secrets() {
    let env = TestEnv::shared();
    let release_ns = env.namespace("helm-ns-release").await.unwrap();
    let watched = env.namespace("helm-ns-watched").await.unwrap();
    let other = env.namespace("helm-ns-other").await.unwrap();
    let client = env.client().await.unwrap();
    let helm = Helm::new(Some(env.kubeconfig()));
    // The CRD is the shared control plane's: not Helm's to install or own here.
    let release = "ns-pgmcp";
    let text = run_ok(
        helm.command()
            .args(["install", release])
            .arg(chart())
            .args(["--namespace", &release_ns.name, "--skip-crds"])
            .arg(format!("--set=watchNamespaces={{{}}}", watched.name)),
    );
    assert!(text.contains("STATUS: deployed"), "{text}");
    let operator_name = "ns-pgmcp-operator";
    let cluster = format!("{operator_name}-{}", release_ns.name);

    // RBAC as rendered: a Role where bindings are watched, nothing cluster-wide but the CRD read.
    let roles: Api<Role> = watched.api();
    let role = roles.get(operator_name).await.unwrap();
    assert!(
        role.rules
            .unwrap_or_default()
            .iter()
            .any(
                |r| r.resources.as_deref() == Some(&["secrets".to_owned()][..])
                    && !r.verbs.contains(&"list".to_owned())
            ),
        "a secrets rule without list"
    );
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    assert!(cluster_roles.get_opt(&cluster).await.unwrap().is_none());
    let crd_role = cluster_roles.get(&format!("{cluster}-crd")).await.unwrap();
    assert_eq!(
        crd_role.rules.unwrap()[0].resource_names,
        Some(vec![pgmcp_crds::CRD_NAME.to_owned()])
    );

    // The operator with the ServiceAccount's token and the Deployment's args reconciles a binding
    // in the watched namespace, and leaves the one in the other namespace alone.
    let args = deployment_args(&client, &release_ns.name, operator_name).await;
    assert!(
        args.contains(&format!("--namespace={}", watched.name)),
        "{args:?}"
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = service_account_kubeconfig(env, &release_ns.name, operator_name, dir.path());
    let operator = Operator::start_with_kubeconfig(&kubeconfig, "ns-operator-0", &args)
        .await
        .unwrap();
    let _other_db = apply_password_example(&other).await;
    let _db = apply_password_example(&watched).await;
    wait_reconciled(&watched.api(), &operator).await;
    assert_password_secret(&watched).await;
    let untouched: PostgresMcpBinding = other.api().get(BINDING).await.unwrap();
    assert!(untouched.status.is_none(), "{:?}", untouched.status);
    assert_nothing_forbidden(&operator);
    eventually(
        "the leader Lease in the release namespace",
        WAIT,
        || async {
            let (ok, text) = run(release_ns.kubectl().args([
                "get",
                "lease",
                operator_name,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ]));
            ok && text == "ns-operator-0"
        },
    )
    .await;

    // Least privilege: Secrets only by name, and only where it watches.
    let sa = |verb: &str, resource: &str, namespace: Option<&str>| {
        can_i(
            env,
            &release_ns.name,
            operator_name,
            verb,
            resource,
            namespace,
        )
    };
    assert!(sa("get", "secrets", Some(&watched.name)));
    assert!(!sa("list", "secrets", Some(&watched.name)));
    assert!(!sa("watch", "secrets", Some(&watched.name)));
    assert!(!sa("get", "secrets", Some(&other.name)));
    assert!(!sa("get", "secrets", Some(&release_ns.name)));
    assert!(!sa("list", "secrets", None));
    assert!(!sa(
        "list",
        "postgresmcpbindings.pgmcp.dev",
        Some(&other.name)
    ));
    assert!(!sa("list", "postgresmcpbindings.pgmcp.dev", None));
    assert!(!sa("create", "deployments.apps", Some(&other.name)));
    assert!(sa("create", "deployments.apps", Some(&watched.name)));
    assert!(sa(
        "get",
        &format!("leases/{operator_name}"),
        Some(&release_ns.name)
    ));
    assert!(!sa("get", "leases/someone-else", Some(&release_ns.name)));
    assert!(!sa("create", "leases", Some(&watched.name)));

    // helm uninstall removes the Roles in the watched namespace and the cluster-scoped objects.
    drop(operator);
    run_ok(
        helm.command()
            .args(["uninstall", release, "--namespace", &release_ns.name]),
    );
    eventually("the release's RBAC removed", WAIT, || async {
        roles
            .get_opt(operator_name)
            .await
            .is_ok_and(|r| r.is_none())
            && cluster_roles
                .get_opt(&format!("{cluster}-crd"))
                .await
                .is_ok_and(|r| r.is_none())
    })
    .await;
    assert!(crd_established(&client).await, "the shared CRD stays");
}
