//! The images a user deploys, as pods under a real kubelet (`pgmcp_tests::node`): `helm install`
//! of the chart with the images `make images` built, with AKS workload identity and a trust
//! bundle; the operator runs as its Deployment's pods (leader election, probes, RBAC from its own
//! ServiceAccount token, Entra and ARM with the token the workload-identity webhook projects);
//! a password binding's server starts from its image with the securityContext enforced, passes
//! its probes and answers the official MCP Python SDK at its pod's address; an edit of the
//! binding rolls the pods and the new pods serve the new grants; an Entra + Foundry binding's
//! server signs in to PostgreSQL with its projected token through the Entra fake and serves an
//! agent's Entra token; deleting the bindings removes everything they made.
//!
//! Each test runs in network, mount and PID namespaces of its own (`node::isolated`), with a
//! control plane, PostgreSQL and node of its own. The Azure fakes and the webhook listen on the
//! node's address there, where the pods reach them.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::bindings::{
    command_ok, condition, create_admin_secret, delete_and_wait, kubectl_apply, password_example,
    wait_condition,
};
use pgmcp_tests::controlplane::TestEnv;
use pgmcp_tests::foundry::{Foundry, MI_CLIENT_ID, OPERATOR_CLIENT_ID, TENANT};
use pgmcp_tests::node::{self, TestNode};
use pgmcp_tests::publish;
use pgmcp_tests::webhook::{self, WebhookConfig, WorkloadIdentityWebhook};
use pgmcp_tests::{Postgres, mcp, paths};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The archives `make images` writes.
fn images() -> Vec<PathBuf> {
    let images = paths::images();
    for image in &images {
        paths::require(image, "build the images with `make images`").unwrap();
    }
    images
}

/// helm with its own cache/config directories, pointed at `kubeconfig`.
fn helm(home: &Path, kubeconfig: &Path) -> Command {
    let mut command = Command::new(paths::helm());
    for (var, dir) in [
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ] {
        command.env(var, home.join(dir));
    }
    command.arg("--kubeconfig").arg(kubeconfig);
    command
}

/// Waits until `check` holds, failing with `what` and the node's logs.
async fn eventually<F, Fut>(what: &str, node: &TestNode, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not after {WAIT:?}\n{}",
            node.logs(30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Ready pods matching `selector`, with their IPs.
async fn ready_pods(pods: &Api<Pod>, selector: &str) -> Vec<(String, String)> {
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| {
            let status = pod.status?;
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let ip = status.pod_ip?;
            ready.then(|| (pod.metadata.name.unwrap_or_default(), ip))
        })
        .collect()
}

/// Waits until Ready pods match `selector` and each passes `keep`; returns them.
async fn wait_pods(
    what: &str,
    node: &TestNode,
    pods: &Api<Pod>,
    selector: &str,
    keep: impl Fn(&(String, String)) -> bool,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = ready_pods(pods, selector).await;
        if !ready.is_empty() && ready.iter().all(&keep) {
            return ready;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not after {WAIT:?} ({ready:?})\n{}",
            node.logs(30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The processes of the containers running `binary` (in the test's PID namespace, where the
/// node's containers are): their pid, and what the kernel says of them (status and mounts).
fn container_processes(binary: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if argv0 == binary.as_bytes() {
            let read = |file: &str| std::fs::read_to_string(entry.path().join(file));
            let state = read("status").unwrap_or_default() + &read("mountinfo").unwrap_or_default();
            found.push((entry.file_name().to_string_lossy().into_owned(), state));
        }
    }
    found
}

/// What /proc shows a platform team of a container: uid and gid 65532, a seccomp filter, and a
/// read-only root filesystem.
fn assert_locked_down(binary: &str, expected: usize) {
    let processes = container_processes(binary);
    assert_eq!(processes.len(), expected, "{binary}: {expected} processes");
    for (_, state) in &processes {
        assert!(
            state.contains("Uid:\t65532\t65532\t65532\t65532")
                && state.contains("Gid:\t65532\t65532\t65532\t65532"),
            "{binary} runs as 65532: {state}"
        );
        assert!(
            state.contains("Seccomp:\t2"),
            "{binary} has a seccomp filter: {state}"
        );
        let root_read_only = state.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(4) == Some(&"/")
                && fields
                    .get(5)
                    .is_some_and(|o| o.split(',').any(|o| o == "ro"))
        });
        assert!(root_read_only, "{binary} has a read-only root: {state}");
    }
}

/// Whether the Service's EndpointSlices list `ip` as ready (the Service routes to it).
async fn routed(client: &kube::Client, namespace: &str, service: &str, ip: &str) -> bool {
    publish::ready_endpoints(client, namespace, service)
        .await
        .unwrap()
        .iter()
        .any(|ready| ready == ip)
}

/// The restart count of pod `name`'s container.
async fn restarts(pods: &Api<Pod>, name: &str) -> i32 {
    let pod = pods.get(name).await.unwrap();
    pod.status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.first().map(|c| c.restart_count))
        .unwrap_or_default()
}

/// The official MCP Python SDK's answer to `script` (`mcp::run_python_client`), which must
/// succeed.
fn python_client(args: &[String], script: &serde_json::Value) -> serde_json::Value {
    let out = mcp::run_python_client(args, script, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Namespace of the chart's release.
const RELEASE_NAMESPACE: &str = "pgmcp-system";
/// The ConfigMap of the chart's `trustBundle`, in [`RELEASE_NAMESPACE`].
const TRUST_BUNDLE: &str = "pgmcp-trust";

/// The Azure side of an Entra + Foundry binding for pods on the node: its database (the
/// `pgaadauth` fixture, the Entra admin), the Entra and ARM fakes on the node's address, the
/// operator's managed identity federated with the chart's ServiceAccount, and the
/// workload-identity webhook, registered with the apiserver.
async fn azure_for_pods(
    env: &'static TestEnv,
    pg: &'static Postgres,
) -> (Foundry, WorkloadIdentityWebhook) {
    let db = pg.create_database("node_sales").await.unwrap();
    let azure = Foundry::start_in(&db, pg.host_for_pods()).await.unwrap();
    let cas = azure.fake_cas();
    azure
        .operator_identity(&cas)
        .register(env, RELEASE_NAMESPACE)
        .await
        .unwrap();
    let webhook = WorkloadIdentityWebhook::start(
        env.client().await.unwrap(),
        &format!("{}:0", node::NODE_IP),
        WebhookConfig::new(TENANT, azure.entra.url()),
    )
    .await
    .unwrap();
    (azure, webhook)
}

/// The release namespace with the trust bundle ConfigMap (the fakes' CAs, as trust-manager
/// would write a private cloud's), and the chart's values: workload identity for the operator,
/// the fakes' endpoints, this cluster's issuer, the bundle.
async fn release_values(env: &TestEnv, azure: &Foundry, dir: &Path) -> PathBuf {
    let client = env.client().await.unwrap();
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": RELEASE_NAMESPACE}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let cas = azure.fake_cas();
    let bundle: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": TRUST_BUNDLE},
        "data": {"ca-certificates.crt": azure.operator_identity(&cas).trust_pem().unwrap()},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client, RELEASE_NAMESPACE)
        .create(&PostParams::default(), &bundle)
        .await
        .unwrap();
    let values = json!({
        "workloadIdentity": {"enabled": true, "clientId": OPERATOR_CLIENT_ID, "tenantId": TENANT},
        "azure": {"oidcIssuer": env.server(), "armEndpoint": azure.arm.url()},
        "trustBundle": {"configMap": TRUST_BUNDLE, "key": "ca-certificates.crt"},
    });
    let path = dir.join("values.yaml");
    std::fs::write(&path, values.to_string()).unwrap();
    path
}

/// The Entra + Foundry binding on the node: the operator (a pod, with the webhook's projected
/// token) creates the principal, the federated credential and the Foundry connection; the
/// server's pod, mutated by the webhook and trusting the chart's bundle through its ConfigMap,
/// signs in to PostgreSQL with a token Entra issues for its projected ServiceAccount token; an
/// agent's Entra token is served; deleting the binding removes it all.
async fn entra_binding_serves_agents(env: &'static TestEnv, node: &TestNode, azure: &Foundry) {
    let ns = env.namespace("node-azure").await.unwrap();
    kubectl_apply(&ns, &azure.binding("sales", env.server()).to_string());
    let bindings: Api<PostgresMcpBinding> = ns.api();
    let binding = wait_condition(&bindings, "sales", "Ready", "True", None, WAIT).await;
    assert_eq!(
        condition(&binding, "IdentityReady").unwrap().reason,
        "FederatedCredentialReady"
    );
    assert!(
        azure
            .entra
            .issued()
            .iter()
            .any(|i| i.client_id == MI_CLIENT_ID),
        "the server exchanged its projected ServiceAccount token for the managed identity"
    );
    let status = binding.status.clone().unwrap();
    let fic_id = status.federated_credential.as_ref().unwrap().id.clone();
    let connection_id = status.foundry.as_ref().unwrap().connection_id.clone();
    assert!(azure.arm.resource(&fic_id).is_some());
    assert!(azure.arm.resource(&connection_id).is_some());

    // What the webhook and the operator put in the server's pod.
    let pods: Api<Pod> = ns.api();
    let selector = "app.kubernetes.io/name=pgmcp-server,app.kubernetes.io/instance=sales";
    let servers = wait_pods(
        "the Entra server's pod Ready",
        node,
        &pods,
        selector,
        |_| true,
    )
    .await;
    let (pod_name, ip) = servers[0].clone();
    let pod = serde_json::to_value(pods.get(&pod_name).await.unwrap()).unwrap();
    let env_vars = &pod["spec"]["containers"][0]["env"];
    for (name, value) in [
        ("AZURE_CLIENT_ID", MI_CLIENT_ID),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_FEDERATED_TOKEN_FILE", webhook::TOKEN_FILE),
        ("AZURE_AUTHORITY_HOST", azure.entra.url()),
        ("SSL_CERT_FILE", "/etc/pgmcp/ca-certificates.crt"),
    ] {
        assert!(
            env_vars
                .as_array()
                .unwrap()
                .contains(&json!({"name": name, "value": value})),
            "{name}={value} in {env_vars}"
        );
    }

    // An agent with the app role, configured from status.connect, through the official SDK.
    let connect = binding.status.unwrap().connect.unwrap();
    let token = azure
        .agent_token(connect.token_scope.as_deref().unwrap())
        .await
        .unwrap();
    let service = format!("sales-mcp.{}.svc", ns.name);
    node::resolve(&service, &ip).unwrap();
    let url = format!("http://{service}:8080/mcp");
    let script = json!({"calls": [
        {"tool": "query", "arguments": {"sql": "SELECT count(*) AS n FROM sales"}},
    ]});
    let doc = python_client(
        &[
            "--url".to_owned(),
            url.clone(),
            "--bearer".to_owned(),
            token,
        ],
        &script,
    );
    assert_eq!(mcp::listed_tool_names(&doc), connect.tools);
    assert_eq!(doc["results"][0]["isError"], json!(false), "{doc}");
    // Without a token the same server refuses with MCP's authorization challenge (a client's
    // failure alone would not tell a refusal from an unreachable pod).
    let anonymous = reqwest::Client::new()
        .post(&url)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);
    let challenge = anonymous.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer "), "{challenge}");

    // Delete: the connection, the credential, the principal and the pods go.
    delete_and_wait(&bindings, "sales", WAIT).await;
    assert!(
        azure.arm.resource(&connection_id).is_none(),
        "connection deleted"
    );
    assert!(azure.arm.resource(&fic_id).is_none(), "credential deleted");
    assert_eq!(
        azure.principal_oid().await.unwrap(),
        None,
        "principal dropped"
    );
    eventually("the Entra server's pods gone", node, || async {
        pods.list(&ListParams::default().labels(selector))
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;
}

#[test]
fn the_chart_and_bindings_run_from_the_images_under_a_real_kubelet() {
    if !node::isolated("the_chart_and_bindings_run_from_the_images_under_a_real_kubelet") {
        return;
    }
    runtime().block_on(async {
        let images = images();
        let env: &'static TestEnv = Box::leak(Box::new(TestEnv::start_for_node().await.unwrap()));
        let pg: &'static Postgres = Box::leak(Box::new(Postgres::start_for_node().await.unwrap()));
        let node = TestNode::start(env, &images).await.unwrap();
        let client = env.client().await.unwrap();

        let (azure, _webhook) = azure_for_pods(env, pg).await;

        // helm install with the images imported under the names the chart uses by default,
        // workload identity and the trust bundle. --wait: the operator's Deployment becomes
        // available, which needs its probes to pass.
        let home = tempfile::tempdir().unwrap();
        let values = release_values(env, &azure, home.path()).await;
        let mut install = helm(home.path(), env.kubeconfig());
        install
            .args(["install", "pgmcp"])
            .arg(paths::workspace_root().join("charts/pgmcp"))
            .args(["--namespace", RELEASE_NAMESPACE, "--values"])
            .arg(&values)
            .args(["--wait", "--timeout", "180s"]);
        command_ok(install);
        let system_pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
        let operators = ready_pods(&system_pods, "app.kubernetes.io/name=pgmcp").await;
        assert_eq!(
            operators.len(),
            2,
            "two operator replicas Ready: {operators:?}"
        );
        // Each operator container runs as 65532 with seccomp, on a read-only root.
        assert_locked_down("/usr/local/bin/pgmcp-operator", 2);

        // A password binding, as the example, pointed at PostgreSQL on the node's address.
        let ns = env.namespace("node").await.unwrap();
        let db = pg.create_database("node_shop").await.unwrap();
        db.load_shop().await.unwrap();
        let role = format!("{}_mcp", db.name);
        create_admin_secret(&ns, pg);
        let example = password_example(pg.host_for_pods(), pg.port(), &db.name, &role);
        kubectl_apply(&ns, &example);
        let bindings: Api<PostgresMcpBinding> = ns.api();
        wait_condition(&bindings, "shop", "Ready", "True", None, WAIT).await;
        let pods: Api<Pod> = ns.api();
        let selector = "app.kubernetes.io/name=pgmcp-server,app.kubernetes.io/instance=shop";
        let servers = wait_pods("the server's pod Ready", &node, &pods, selector, |_| true).await;

        // The official MCP Python SDK at the Service's name, resolved to the pod's address.
        let service = format!("shop-mcp.{}.svc", ns.name);
        let call = |ip: &str, sql: &str| {
            node::resolve(&service, ip).unwrap();
            let script = json!({"calls": [
                {"tool": "list_tables", "arguments": {}},
                {"tool": "query", "arguments": {"sql": sql}},
            ]});
            python_client(
                &["--url".to_owned(), format!("http://{service}:8080/mcp")],
                &script,
            )
        };
        let (first_pod, ip) = servers[0].clone();
        assert_locked_down("/usr/local/bin/pgmcp-server", 1);
        let doc = call(&ip, "SELECT count(*) AS n FROM customers");
        let tables = doc["results"][0]["text"].as_str().unwrap();
        assert!(tables.contains("customers"), "{tables}");
        assert_eq!(doc["results"][1]["isError"], json!(false), "{doc}");

        // Beside it, an Entra + Foundry binding (before PostgreSQL is restarted below: the Entra
        // fake sets its principals' passwords through a connection opened at the start).
        entra_binding_serves_agents(env, &node, &azure).await;

        // PostgreSQL down: the server's readiness probe fails and the Service stops routing to
        // it; PostgreSQL back: it routes again, and the server answers.
        eventually("the Service routes to the server", &node, || {
            routed(&ns.client, &ns.name, "shop-mcp", &ip)
        })
        .await;
        pg.stop();
        eventually(
            "the Service stops routing while PostgreSQL is down",
            &node,
            || async { !routed(&ns.client, &ns.name, "shop-mcp", &ip).await },
        )
        .await;
        pg.restart().await.unwrap();
        eventually("the Service routes again", &node, || {
            routed(&ns.client, &ns.name, "shop-mcp", &ip)
        })
        .await;
        let doc = call(&ip, "SELECT 1");
        assert_eq!(doc["results"][1]["isError"], json!(false), "{doc}");

        // A server that hangs (stopped, so it answers nothing) fails its liveness probe: the
        // kubelet kills it, the container restarts, and it serves again.
        let (pid, _) = container_processes("/usr/local/bin/pgmcp-server").remove(0);
        let mut stop = Command::new("kill");
        stop.args(["-STOP", &pid]);
        command_ok(stop);
        eventually("the kubelet restarts the hung server", &node, || async {
            restarts(&pods, &first_pod).await == 1
        })
        .await;
        wait_pods("the restarted server Ready", &node, &pods, selector, |_| {
            true
        })
        .await;
        let doc = call(&ip, "SELECT count(*) FROM customers");
        assert_eq!(doc["results"][1]["isError"], json!(false), "{doc}");

        // kubectl edit: the binding grants one table less; the pods roll and the new pod
        // serves the new grants.
        let edited = example.replace(r#"tables: ["*"]"#, r#"tables: ["customers"]"#);
        assert_ne!(edited, example, "the example grants every table");
        kubectl_apply(&ns, &edited);
        let rolled = wait_pods(
            "a new server pod Ready",
            &node,
            &pods,
            selector,
            |(name, _)| *name != first_pod,
        )
        .await;
        let doc = call(&rolled[0].1, "SELECT count(*) FROM orders");
        assert_eq!(doc["results"][1]["isError"], json!(true), "{doc}");

        // Delete: the Deployment, its pods and the role go.
        delete_and_wait(&bindings, "shop", WAIT).await;
        let deployments: Api<Deployment> = ns.api();
        eventually("the server's pods gone", &node, || async {
            deployments.get_opt("shop-mcp").await.unwrap().is_none()
                && pods
                    .list(&ListParams::default().labels(selector))
                    .await
                    .unwrap()
                    .items
                    .is_empty()
        })
        .await;
        let remaining: i64 = db
            .connect()
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .unwrap()
            .get(0);
        assert_eq!(remaining, 0, "the role is gone");
        drop(node);
    });
}
