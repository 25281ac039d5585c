//! The operator against the real control plane (apiserver + controller-manager): an example
//! binding becomes a ServiceAccount, ConfigMap, Service and Deployment with owner references;
//! Ready follows the Deployment's availability; edits roll the pods; deleted or edited children
//! are repaired; deletion runs the finalizer and garbage collection; a missing Secret (the admin
//! Secret, the telemetry headers Secret) stalls the binding until it appears; telemetry reaches
//! the server's environment and leaves it with the section; a steady state makes no write calls;
//! and of two replicas only the Lease holder reconciles.
//!
//! There is no kubelet: pods stay Pending until a test marks them Ready through the pod status
//! subresource, exactly the write a kubelet makes; the controller-manager then turns that into
//! ReplicaSet and Deployment availability.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt as _};
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::bindings::{
    self, apply_password_example, condition, create_admin_secret, kubectl_apply, kubectl_ok,
    password_example,
};
use pgmcp_tests::operator::Operator;
use pgmcp_tests::podrunner;
use pgmcp_tests::{Postgres, TestDatabase, TestEnv, eventually, wait_for};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(45);
const NAME: &str = "shop";
const CHILD: &str = "shop-mcp";

/// The password example for `db`, with a role of its own (roles are server-wide).
fn example(db: &TestDatabase) -> String {
    let pg = db.server();
    password_example(pg.host(), pg.port(), &db.name, &format!("{}_r", db.name))
}

/// Waits until condition `type_` of the binding has `status` (and, if given, `reason`).
async fn wait_condition(
    api: &Api<PostgresMcpBinding>,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> PostgresMcpBinding {
    bindings::wait_condition(api, NAME, type_, status, reason, WAIT).await
}

/// Marks every pod of the binding Running and Ready, as the kubelet would.
async fn make_pods_ready(client: &Client, namespace: &str) -> usize {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = ListParams::default().labels(&format!("app.kubernetes.io/instance={NAME}"));
    let list = wait_for("pods of the Deployment", WAIT, || async {
        let list = pods.list(&selector).await.ok()?;
        (!list.items.is_empty()).then_some(list)
    })
    .await;
    for pod in &list.items {
        podrunner::mark_ready(client, namespace, &pod.name_any())
            .await
            .unwrap();
    }
    list.items.len()
}

/// A merge patch of the binding, as `kubectl patch --type merge` makes it.
async fn patch_spec(bindings: &Api<PostgresMcpBinding>, patch: serde_json::Value) {
    bindings
        .patch(NAME, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

fn owned_by(object: &impl kube::Resource, binding: &PostgresMcpBinding) -> bool {
    object.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && o.kind == "PostgresMcpBinding"
            && Some(&o.uid) == binding.metadata.uid.as_ref()
    })
}

#[tokio::test]
async fn example_binding_gets_its_children_and_is_ready_when_its_pods_are() {
    let env = TestEnv::shared();
    let ns = env.namespace("operator-ready").await.unwrap();
    let _operator = Operator::start(env, &ns.name, "op-ready", &[])
        .await
        .unwrap();
    let db = apply_password_example(&ns).await;
    let bindings: Api<PostgresMcpBinding> = ns.api();

    let binding = wait_condition(
        &bindings,
        "ServerAvailable",
        "False",
        Some("WaitingForPods"),
    )
    .await;
    assert_eq!(binding.finalizers(), [pgmcp_crds::FINALIZER.to_owned()]);
    let ready = condition(&binding, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "WaitingForPods")
    );
    assert_eq!(condition(&binding, "Reconciling").unwrap().status, "True");
    assert_eq!(condition(&binding, "Stalled").unwrap().status, "False");
    assert_eq!(
        binding.status.as_ref().unwrap().endpoint.clone().unwrap(),
        format!("http://{CHILD}.{}.svc:8080/mcp", ns.name)
    );

    // Every child exists, is owned by the binding and carries our labels.
    let sa: ServiceAccount = ns.api().get(CHILD).await.unwrap();
    let cm: ConfigMap = ns.api().get(CHILD).await.unwrap();
    let svc: Service = ns.api().get(CHILD).await.unwrap();
    let deploy: Deployment = ns.api().get(CHILD).await.unwrap();
    for (kind, meta) in [
        ("ServiceAccount", &sa.metadata),
        ("ConfigMap", &cm.metadata),
        ("Service", &svc.metadata),
        ("Deployment", &deploy.metadata),
    ] {
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("pgmcp-operator"),
            "{kind}"
        );
        assert_eq!(
            labels.get("app.kubernetes.io/instance").map(String::as_str),
            Some(NAME),
            "{kind}"
        );
        let owners = meta.owner_references.clone().unwrap_or_default();
        assert!(
            owners.iter().any(
                |o| o.controller == Some(true) && Some(&o.uid) == binding.metadata.uid.as_ref()
            ),
            "{kind} is controlled by the binding: {owners:?}"
        );
    }
    let config: serde_json::Value =
        serde_json::from_str(&cm.data.as_ref().unwrap()["config.json"]).unwrap();
    assert_eq!(config["database"]["user"], format!("{}_r", db.name));
    let pod = deploy
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(CHILD));
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("pgmcp-server:test")
    );

    // The controller-manager did its part: a ReplicaSet and Pending pods.
    let replica_sets: Api<ReplicaSet> = ns.api();
    wait_for("a ReplicaSet of the Deployment", WAIT, || async {
        let list = replica_sets.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|rs| owned_by_deployment(rs, &deploy))
    })
    .await;
    assert_eq!(make_pods_ready(&ns.client, &ns.name).await, 1);

    let binding = wait_condition(&bindings, "Ready", "True", Some("Ready")).await;
    assert_eq!(
        condition(&binding, "ServerAvailable").unwrap().reason,
        "Available"
    );
    assert_eq!(condition(&binding, "Reconciling").unwrap().status, "False");
    assert_eq!(
        condition(&binding, "DatabaseReady").unwrap().reason,
        "GrantsMatch"
    );
    assert_eq!(
        condition(&binding, "ReadOnlyVerified").unwrap().reason,
        "ReadOnly"
    );

    // What the user sees.
    let mut get = ns.kubectl();
    get.args(["get", "pgmcp", NAME]);
    let table = kubectl_ok(get);
    assert!(
        table.contains("READY") && table.contains("ENDPOINT"),
        "{table}"
    );
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.starts_with("shop ") && row.contains(" True ") && row.contains(" Ready "),
        "{table}"
    );
    assert!(
        row.contains(&format!("http://{CHILD}.{}.svc:8080/mcp", ns.name)),
        "{table}"
    );

    // Events: one for the children created (not one each), one for the grants.
    let events: Api<Event> = ns.api();
    let events: Vec<(String, String)> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(NAME))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect();
    let created: Vec<&String> = events
        .iter()
        .filter(|(reason, _)| reason == "Created")
        .map(|(_, note)| note)
        .collect();
    assert_eq!(created.len(), 1, "{events:?}");
    for kind in ["ServiceAccount", "ConfigMap", "Service", "Deployment"] {
        assert!(
            created[0].contains(&format!("created {kind} {}/{CHILD}", ns.name)),
            "{kind} in {}",
            created[0]
        );
    }
    assert!(
        events.iter().any(|(reason, _)| reason == "Granted"),
        "{events:?}"
    );
    let mut describe = ns.kubectl();
    describe.args(["describe", "pgmcp", NAME]);
    let described = kubectl_ok(describe);
    assert!(
        described.contains("Created") && described.contains("created Deployment"),
        "{described}"
    );
}

fn owned_by_deployment(rs: &ReplicaSet, deploy: &Deployment) -> bool {
    rs.owner_references()
        .iter()
        .any(|o| Some(&o.uid) == deploy.metadata.uid.as_ref())
}

#[tokio::test]
async fn edits_roll_the_pods_and_deleted_or_edited_children_are_repaired() {
    let env = TestEnv::shared();
    let ns = env.namespace("operator-repair").await.unwrap();
    let _operator = Operator::start(env, &ns.name, "op-repair", &[])
        .await
        .unwrap();
    apply_password_example(&ns).await;
    let bindings: Api<PostgresMcpBinding> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let binding = wait_condition(&bindings, "ServerAvailable", "False", None).await;
    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["pgmcp.dev/config-hash"]
            .clone()
    };
    let before = hash(&deployments.get(CHILD).await.unwrap());

    // A config change reaches the ConfigMap and rolls the pods (a new ReplicaSet).
    patch_spec(
        &bindings,
        json!({"spec": {"server": {"limits": {"maxRows": 25}}}}),
    )
    .await;
    let configs: Api<ConfigMap> = ns.api();
    wait_for("maxRows 25 in the ConfigMap", WAIT, || async {
        let cm = configs.get(CHILD).await.ok()?;
        cm.data?
            .get("config.json")?
            .contains("\"maxRows\": 25")
            .then_some(())
    })
    .await;
    let after = wait_for("a new config hash on the pod template", WAIT, || async {
        let h = hash(&deployments.get(CHILD).await.ok()?);
        (h != before).then_some(h)
    })
    .await;
    assert_ne!(before, after);
    let replica_sets: Api<ReplicaSet> = ns.api();
    eventually("a second ReplicaSet (rollout)", WAIT, || async {
        replica_sets
            .list(&ListParams::default())
            .await
            .is_ok_and(|l| l.items.len() >= 2)
    })
    .await;

    // A deleted child comes back.
    let services: Api<Service> = ns.api();
    let old_uid = services.get(CHILD).await.unwrap().metadata.uid;
    services
        .delete(CHILD, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the Service recreated", WAIT, || async {
        services
            .get_opt(CHILD)
            .await
            .ok()
            .flatten()
            .is_some_and(|s| s.metadata.uid != old_uid && owned_by(&s, &binding))
    })
    .await;

    // A hand edit of a field the operator owns is reverted.
    let mut scale = ns.kubectl();
    scale.args(["scale", "deployment", CHILD, "--replicas=4"]);
    kubectl_ok(scale);
    eventually("replicas back to 1", WAIT, || async {
        deployments
            .get(CHILD)
            .await
            .is_ok_and(|d| d.spec.unwrap().replicas == Some(1))
    })
    .await;

    // Two replicas get a PodDisruptionBudget; back to one removes it.
    let pdbs: Api<PodDisruptionBudget> = ns.api();
    patch_spec(&bindings, json!({"spec": {"server": {"replicas": 2}}})).await;
    eventually("a PodDisruptionBudget", WAIT, || async {
        pdbs.get_opt(CHILD).await.ok().flatten().is_some()
    })
    .await;
    patch_spec(&bindings, json!({"spec": {"server": {"replicas": 1}}})).await;
    eventually("the PodDisruptionBudget removed", WAIT, || async {
        pdbs.get_opt(CHILD).await.ok().flatten().is_none()
    })
    .await;

    // Each change was announced (the last Event follows the PodDisruptionBudget's removal).
    let expected = [
        "created Deployment",
        "updated ConfigMap",
        "created Service",
        "deleted PodDisruptionBudget",
    ];
    let announced = || {
        let mut events = ns.kubectl();
        events.args([
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={NAME}"),
        ]);
        kubectl_ok(events)
    };
    eventually(
        "an Event for each change (kubectl get events)",
        WAIT,
        || async {
            let events = announced();
            expected.iter().all(|e| events.contains(e))
        },
    )
    .await;
}

#[tokio::test]
async fn deleting_the_binding_runs_the_finalizer_and_collects_the_children() {
    let env = TestEnv::shared();
    let ns = env.namespace("operator-delete").await.unwrap();
    let operator = Operator::start(env, &ns.name, "op-delete", &[])
        .await
        .unwrap();
    apply_password_example(&ns).await;
    let bindings: Api<PostgresMcpBinding> = ns.api();
    wait_condition(&bindings, "ServerAvailable", "False", None).await;
    let deployments: Api<Deployment> = ns.api();
    assert!(deployments.get_opt(CHILD).await.unwrap().is_some());

    bindings
        .delete(NAME, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the binding gone (finalizer removed)", WAIT, || async {
        bindings.get_opt(NAME).await.ok().flatten().is_none()
    })
    .await;
    let sas: Api<ServiceAccount> = ns.api();
    let configs: Api<ConfigMap> = ns.api();
    eventually("children garbage-collected", WAIT, || async {
        deployments.get_opt(CHILD).await.ok().flatten().is_none()
            && sas.get_opt(CHILD).await.ok().flatten().is_none()
            && configs.get_opt(CHILD).await.ok().flatten().is_none()
    })
    .await;
    assert!(
        operator.log().contains("cleanup step done"),
        "{}",
        operator.log()
    );
}

#[tokio::test]
async fn a_missing_admin_secret_stalls_the_binding_naming_it_until_it_appears() {
    let env = TestEnv::shared();
    let ns = env.namespace("operator-stalled").await.unwrap();
    let _operator = Operator::start(env, &ns.name, "op-stalled", &[])
        .await
        .unwrap();
    let pg = Postgres::shared();
    let db = pg.create_database(&ns.name).await.unwrap();
    kubectl_apply(&ns, &example(&db));
    let bindings: Api<PostgresMcpBinding> = ns.api();
    let binding = wait_condition(&bindings, "Stalled", "True", Some("SecretNotFound")).await;
    let stalled = condition(&binding, "Stalled").unwrap();
    assert!(
        stalled
            .message
            .contains(&format!("secret {}/pg-admin", ns.name))
            && stalled
                .message
                .contains("spec.postgres.admin.passwordSecretRef"),
        "{}",
        stalled.message
    );
    assert_eq!(
        condition(&binding, "Ready").unwrap().reason,
        "SecretNotFound"
    );
    let deployments: Api<Deployment> = ns.api();
    assert!(
        deployments.get_opt(CHILD).await.unwrap().is_none(),
        "nothing deployed while stalled"
    );
    // An empty record, kept as such: nothing exists outside the cluster yet.
    let inventory = binding.status.as_ref().unwrap().inventory.clone();
    assert_eq!(
        inventory,
        Some(Default::default()),
        "an empty record is stored"
    );

    create_admin_secret(&ns, pg);
    let binding = wait_condition(
        &bindings,
        "ServerAvailable",
        "False",
        Some("WaitingForPods"),
    )
    .await;
    assert_eq!(condition(&binding, "Stalled").unwrap().status, "False");
    assert!(deployments.get_opt(CHILD).await.unwrap().is_some());
}

/// The server container's environment in the Deployment, as `(name, value or source)` pairs.
async fn server_env(deployments: &Api<Deployment>) -> Option<Vec<(String, serde_json::Value)>> {
    let deploy = deployments.get_opt(CHILD).await.ok()??;
    let container = deploy.spec?.template.spec?.containers.into_iter().next()?;
    Some(
        container
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let value = match (e.value, e.value_from) {
                    (Some(value), _) => json!(value),
                    (None, from) => serde_json::to_value(from).unwrap(),
                };
                (e.name, value)
            })
            .collect(),
    )
}

#[tokio::test]
async fn telemetry_waits_for_its_headers_secret_then_rolls_the_pods_and_leaves_with_the_section() {
    let env = TestEnv::shared();
    let ns = env.namespace("operator-telemetry").await.unwrap();
    let _operator = Operator::start(env, &ns.name, "op-telemetry", &[])
        .await
        .unwrap();
    apply_password_example(&ns).await;
    let bindings: Api<PostgresMcpBinding> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    wait_condition(&bindings, "ServerAvailable", "False", None).await;
    let names = |env: &[(String, serde_json::Value)]| -> Vec<String> {
        env.iter().map(|(name, _)| name.clone()).collect()
    };
    let before = server_env(&deployments).await.unwrap();
    assert_eq!(
        before,
        [
            ("OTEL_SERVICE_NAME".to_owned(), json!("pgmcp-server")),
            (
                "OTEL_RESOURCE_ATTRIBUTES".to_owned(),
                json!(format!(
                    "k8s.namespace.name={},pgmcp.binding={NAME}",
                    ns.name
                ))
            ),
        ]
    );

    // Telemetry whose headers Secret does not exist yet: the binding says so, naming the
    // Secret and the field, and the running pods are left alone (new ones could not start).
    patch_spec(
        &bindings,
        json!({"spec": {"server": {"telemetry": {
            "otlpEndpoint": "http://otel-collector.observability.svc:4318",
            "headersSecretRef": {"name": "otel-headers", "key": "headers"},
            "samplingPercent": 20,
            "resourceAttributes": {"team": "data, platform"}
        }}}}),
    )
    .await;
    let binding = wait_condition(&bindings, "Stalled", "True", Some("SecretNotFound")).await;
    let stalled = condition(&binding, "Stalled").unwrap();
    assert!(
        stalled
            .message
            .contains(&format!("secret {}/otel-headers", ns.name))
            && stalled
                .message
                .contains("spec.server.telemetry.headersSecretRef")
            && stalled.message.contains("the key headers"),
        "{}",
        stalled.message
    );
    assert_eq!(server_env(&deployments).await.unwrap(), before);

    // The Secret appears: the next check (within seconds) rolls the pods with the exporter.
    let mut create = ns.kubectl();
    create.args([
        "create",
        "secret",
        "generic",
        "otel-headers",
        "--from-literal=headers=Authorization=Bearer%20token",
    ]);
    kubectl_ok(create);
    let traced = wait_for("the exporter in the server's environment", WAIT, || async {
        let env = server_env(&deployments).await?;
        (env.len() > 2).then_some(env)
    })
    .await;
    assert_eq!(
        names(&traced),
        [
            "OTEL_SERVICE_NAME",
            "OTEL_RESOURCE_ATTRIBUTES",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_TRACES_SAMPLER",
            "OTEL_TRACES_SAMPLER_ARG",
        ]
    );
    let value = |name: &str| {
        traced
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(
        value("OTEL_RESOURCE_ATTRIBUTES"),
        json!(format!(
            "k8s.namespace.name={},pgmcp.binding={NAME},team=data%2C%20platform",
            ns.name
        ))
    );
    assert_eq!(
        value("OTEL_EXPORTER_OTLP_HEADERS"),
        json!({"secretKeyRef": {"name": "otel-headers", "key": "headers", "optional": false}})
    );
    assert_eq!(value("OTEL_TRACES_SAMPLER_ARG"), json!("0.20"));
    let binding = wait_condition(&bindings, "Stalled", "False", None).await;
    assert_ne!(
        condition(&binding, "Ready").unwrap().reason,
        "SecretNotFound"
    );
    let replica_sets: Api<ReplicaSet> = ns.api();
    eventually("a second ReplicaSet (rollout)", WAIT, || async {
        replica_sets
            .list(&ListParams::default())
            .await
            .is_ok_and(|l| l.items.len() >= 2)
    })
    .await;

    // Removing the section removes the exporter again.
    patch_spec(&bindings, json!({"spec": {"server": {"telemetry": null}}})).await;
    wait_for(
        "the exporter gone from the server's environment",
        WAIT,
        || async {
            let env = server_env(&deployments).await?;
            (env == before).then_some(())
        },
    )
    .await;
}

/// Write requests the apiserver served for the kinds the operator writes, from its own
/// `apiserver_request_total` (the controller-manager's Deployment status updates excluded).
async fn operator_kind_writes(client: &Client) -> f64 {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap();
    const KINDS: [&str; 8] = [
        "postgresmcpbindings",
        "serviceaccounts",
        "configmaps",
        "services",
        "deployments",
        "poddisruptionbudgets",
        "networkpolicies",
        "events",
    ];
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            [
                "\"POST\"",
                "\"PUT\"",
                "\"PATCH\"",
                "\"APPLY\"",
                "\"DELETE\"",
            ]
            .iter()
            .any(|v| l.contains(&format!("verb={v}")))
        })
        .filter(|l| {
            KINDS
                .iter()
                .any(|k| l.contains(&format!("resource=\"{k}\"")))
        })
        .filter(|l| {
            !(l.contains("resource=\"deployments\"") && l.contains("subresource=\"status\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_steady_state_resync_makes_no_write_calls() {
    // A control plane of its own: the apiserver's request counters then count only this test.
    let env = TestEnv::start().await.unwrap();
    let env: &'static TestEnv = Box::leak(Box::new(env));
    let ns = env.namespace("operator-noop").await.unwrap();
    let operator = Operator::start(env, &ns.name, "op-noop", &["--resync=1s"])
        .await
        .unwrap();
    apply_password_example(&ns).await;
    let bindings: Api<PostgresMcpBinding> = ns.api();
    wait_condition(
        &bindings,
        "ServerAvailable",
        "False",
        Some("WaitingForPods"),
    )
    .await;
    make_pods_ready(&ns.client, &ns.name).await;
    wait_condition(&bindings, "Ready", "True", None).await;
    // Let the controller-manager's own follow-up settle.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let writes_before = operator_kind_writes(&ns.client).await;
    let own_before = operator
        .metric("pgmcp_operator_writes_total")
        .await
        .unwrap();
    let reconciles_before = operator
        .metric("pgmcp_operator_reconciles_total")
        .await
        .unwrap();
    let rv_before = bindings.get(NAME).await.unwrap().resource_version();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let reconciles = operator
        .metric("pgmcp_operator_reconciles_total")
        .await
        .unwrap()
        - reconciles_before;
    assert!(
        reconciles >= 3.0,
        "resyncs ran: {reconciles} reconciles in 6s"
    );
    assert_eq!(
        operator_kind_writes(&ns.client).await - writes_before,
        0.0,
        "apiserver saw writes"
    );
    assert_eq!(
        operator
            .metric("pgmcp_operator_writes_total")
            .await
            .unwrap()
            - own_before,
        0.0,
        "the operator counted writes:\n{}",
        operator.metrics().await.unwrap()
    );
    assert_eq!(
        bindings.get(NAME).await.unwrap().resource_version(),
        rv_before
    );
    drop(ns);
    // The leaked control plane's processes stop with the test binary (lifelines).
}

async fn lease_holder(client: &Client, namespace: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    leases
        .get_opt("pgmcp-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_a_standby_takes_over() {
    let env = TestEnv::shared();
    let ns = env.namespace("operator-leader").await.unwrap();
    let lease = ["--lease-duration=4s"];
    let mut first = Operator::start(env, &ns.name, "op-first", &lease)
        .await
        .unwrap();
    wait_for("op-first to hold the Lease", WAIT, || async {
        (lease_holder(&ns.client, &ns.name).await.as_deref() == Some("op-first")).then_some(())
    })
    .await;
    let second = Operator::start(env, &ns.name, "op-second", &lease)
        .await
        .unwrap();
    apply_password_example(&ns).await;
    let bindings: Api<PostgresMcpBinding> = ns.api();
    wait_condition(&bindings, "ServerAvailable", "False", None).await;
    assert!(
        first
            .metric("pgmcp_operator_reconciles_total")
            .await
            .unwrap()
            >= 1.0
    );
    assert_eq!(first.metric("pgmcp_operator_leader").await.unwrap(), 1.0);
    assert_eq!(
        second
            .metric("pgmcp_operator_reconciles_total")
            .await
            .unwrap(),
        0.0,
        "the standby reconciled"
    );
    assert_eq!(second.metric("pgmcp_operator_leader").await.unwrap(), 0.0);

    // The leader stops (SIGTERM releases the Lease); the standby takes over and reconciles.
    first.stop();
    assert!(first.exited());
    assert!(
        first.log().contains("released the leader Lease"),
        "{}",
        first.log()
    );
    wait_for("op-second to hold the Lease", WAIT, || async {
        (lease_holder(&ns.client, &ns.name).await.as_deref() == Some("op-second")).then_some(())
    })
    .await;
    patch_spec(
        &bindings,
        json!({"spec": {"server": {"limits": {"maxRows": 10}}}}),
    )
    .await;
    let binding = wait_condition(&bindings, "ServerAvailable", "False", None).await;
    assert_eq!(binding.status.unwrap().observed_generation, Some(2));
    assert!(
        second
            .metric("pgmcp_operator_reconciles_total")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn an_operator_scoped_to_a_namespace_leaves_other_namespaces_alone() {
    let env = TestEnv::shared();
    let watched = env.namespace("operator-scope-in").await.unwrap();
    let other = env.namespace("operator-scope-out").await.unwrap();
    let _operator = Operator::start(env, &watched.name, "op-scope", &[])
        .await
        .unwrap();
    apply_password_example(&other).await;
    apply_password_example(&watched).await;
    wait_condition(&watched.api(), "ServerAvailable", "False", None).await;
    // The watched binding is done; the other one was never touched.
    let untouched: PostgresMcpBinding = other.api().get(NAME).await.unwrap();
    assert!(untouched.status.is_none(), "{:?}", untouched.status);
    assert!(untouched.finalizers().is_empty());
    let deployments: Api<Deployment> = other.api();
    assert!(deployments.get_opt(CHILD).await.unwrap().is_none());
}

#[tokio::test]
async fn the_operator_exports_a_span_per_reconcile_when_telemetry_is_on() {
    let collector = pgmcp_tests::otel::Collector::start().await.unwrap();
    let env = TestEnv::shared();
    let ns = env.namespace("operator-otel").await.unwrap();
    let _operator = Operator::start_with_env(
        env,
        &ns.name,
        "op-otel",
        &[],
        &[(
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            collector.endpoint(),
        )],
    )
    .await
    .unwrap();
    apply_password_example(&ns).await;
    let spans = collector
        .wait_for_spans(
            |spans| {
                spans.iter().any(|s| {
                    s.name == "reconcile PostgresMcpBinding"
                        && s.attributes.get("pgmcp.binding") == Some(&json!(NAME))
                        && s.attributes.get("k8s.namespace.name") == Some(&json!(ns.name))
                })
            },
            WAIT,
        )
        .await
        .unwrap();
    assert!(
        spans
            .iter()
            .all(|s| s.resource.get("service.name") == Some(&json!("pgmcp-operator"))),
        "the operator names itself"
    );
}
