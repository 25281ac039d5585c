//! The PostgresMcpBinding API as users meet it, against a real kube-apiserver: the CRD installs,
//! `kubectl explain` shows our documentation, the examples are accepted, and invalid bindings
//! are rejected by the apiserver itself (schema + CEL) with the field named.

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::{TestEnv, paths};
use serde_json::{Value, json};

fn example(file: &str) -> Value {
    let path = paths::examples_dir().join(file);
    let text = std::fs::read_to_string(&path).expect("example is readable");
    serde_saphyr::from_str(&text).expect("example is YAML")
}

/// Sets `value` at a `/`-separated path, creating objects on the way; `Value::Null` removes.
fn set(doc: &mut Value, path: &str, value: Value) {
    let (parent, last) = path.rsplit_once('/').unwrap_or(("", path));
    let mut node = doc;
    for key in parent.split('/').filter(|k| !k.is_empty()) {
        node = match key.parse::<usize>() {
            Ok(i) => &mut node[i],
            Err(_) => node
                .as_object_mut()
                .expect("path runs through objects")
                .entry(key)
                .or_insert_with(|| json!({})),
        };
    }
    if value.is_null() {
        node.as_object_mut()
            .expect("parent is an object")
            .remove(last);
    } else {
        node[last] = value;
    }
}

fn run(command: &mut std::process::Command) -> (bool, String) {
    let out = command.output().expect("kubectl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn crd_is_established_and_kubectl_explain_prints_our_docs() {
    let env = TestEnv::shared();
    let client = env.client().await.expect("client");
    let crd = Api::<CustomResourceDefinition>::all(client)
        .get(pgmcp_crds::CRD_NAME)
        .await
        .expect("the CRD is installed");
    let established = crd
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(
        established,
        "CRD {} is not Established",
        pgmcp_crds::CRD_NAME
    );
    assert_eq!(
        crd.spec.names.short_names,
        Some(vec!["pgmcp".to_owned(), "pmb".to_owned()])
    );

    // The OpenAPI document kubectl reads is published a moment after the CRD is established.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (ok, text) = run(env
            .kubectl()
            .args(["explain", "postgresmcpbinding.spec.identity"]));
        if ok && text.contains("How the MCP server authenticates to PostgreSQL") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl explain never showed our docs:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        text.contains("entra"),
        "fields of spec.identity are listed:\n{text}"
    );
    assert!(
        text.contains("password"),
        "fields of spec.identity are listed:\n{text}"
    );

    let (ok, text) = run(env
        .kubectl()
        .args(["explain", "pmb.spec.identity.entra.principalName"]));
    assert!(ok, "{text}");
    assert!(
        text.contains("Immutable"),
        "principalName says it is immutable:\n{text}"
    );

    let (ok, text) = run(env
        .kubectl()
        .args(["explain", "pmb.spec.server.results.untrustedDataFraming"]));
    assert!(ok, "{text}");
    // kubectl wraps the description to the terminal's width.
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        joined.contains("instructions aimed at the agent"),
        "untrustedDataFraming says why to keep it on:\n{text}"
    );
}

#[tokio::test]
async fn every_example_passes_server_side_dry_run() {
    let ns = TestEnv::shared()
        .namespace("examples")
        .await
        .expect("namespace");
    let mut files: Vec<_> = std::fs::read_dir(paths::examples_dir())
        .expect("manifests/examples exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "at least four examples, found {files:?}");
    for file in files {
        let (ok, text) = run(ns
            .kubectl()
            .args(["apply", "--dry-run=server", "-f"])
            .arg(&file));
        assert!(ok, "{} was rejected:\n{text}", file.display());
        assert!(
            text.contains("(server dry run)"),
            "{}: {text}",
            file.display()
        );
    }
}

/// One invalid binding: a valid example, one change, and the field the apiserver must name.
struct Invalid {
    name: &'static str,
    base: &'static str,
    change: &'static [(&'static str, Value)],
    field: &'static str,
    message: &'static str,
}

fn invalid_corpus() -> Vec<Invalid> {
    const ENTRA: &str = "azure-entra-foundry.yaml";
    const PASSWORD: &str = "password.yaml";
    let guid = "11111111-1111-1111-1111-111111111111";
    let mi_id = "/subscriptions/55555555-5555-5555-5555-555555555555/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/x";
    let project_id = "/subscriptions/55555555-5555-5555-5555-555555555555/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/a/projects/p";
    // Leaked to get 'static slices of owned JSON: the corpus lives for the whole test.
    let c = |pairs: Vec<(&'static str, Value)>| -> &'static [(&'static str, Value)] {
        Vec::leak(pairs)
    };
    vec![
        Invalid {
            name: "both identity modes",
            base: ENTRA,
            change: c(vec![("spec/identity/password", json!({"roleName": "x"}))]),
            field: "spec.identity",
            message: "exactly one of identity.entra",
        },
        Invalid {
            name: "neither identity mode",
            base: ENTRA,
            change: c(vec![("spec/identity/entra", Value::Null)]),
            field: "spec.identity",
            message: "exactly one of identity.entra",
        },
        Invalid {
            name: "both admin auths",
            base: ENTRA,
            change: c(vec![(
                "spec/postgres/admin/passwordSecretRef",
                json!({"name": "pg-admin"}),
            )]),
            field: "spec.postgres.admin",
            message: "exactly one of admin.entra",
        },
        Invalid {
            name: "neither admin auth",
            base: PASSWORD,
            change: c(vec![("spec/postgres/admin/passwordSecretRef", Value::Null)]),
            field: "spec.postgres.admin",
            message: "exactly one of admin.entra",
        },
        Invalid {
            name: "entra identity with a password admin",
            base: ENTRA,
            change: c(vec![(
                "spec/postgres/admin",
                json!({"passwordSecretRef": {"name": "pg-admin"}}),
            )]),
            field: "spec.postgres.admin",
            message: "only a Microsoft Entra administrator",
        },
        Invalid {
            name: "entra tokens without TLS",
            base: ENTRA,
            change: c(vec![("spec/postgres/sslMode", json!("disable"))]),
            field: "spec.postgres.sslMode",
            message: "require or verify-full",
        },
        Invalid {
            name: "unknown sslMode",
            base: PASSWORD,
            change: c(vec![("spec/postgres/sslMode", json!("allow"))]),
            field: "spec.postgres.sslMode",
            message: "verify-full",
        },
        Invalid {
            name: "host with scheme and port",
            base: PASSWORD,
            change: c(vec![("spec/postgres/host", json!("postgres://db:5432"))]),
            field: "spec.postgres.host",
            message: "without scheme, port or path",
        },
        Invalid {
            name: "port out of range",
            base: PASSWORD,
            change: c(vec![("spec/postgres/port", json!(70000))]),
            field: "spec.postgres.port",
            message: "65535",
        },
        Invalid {
            name: "clientId not a GUID",
            base: ENTRA,
            change: c(vec![("spec/identity/entra/clientId", json!("sales-mcp"))]),
            field: "spec.identity.entra.clientId",
            message: "must be a GUID",
        },
        Invalid {
            name: "tenantId not a GUID",
            base: ENTRA,
            change: c(vec![(
                "spec/identity/entra/tenantId",
                json!("contoso.onmicrosoft.com"),
            )]),
            field: "spec.identity.entra.tenantId",
            message: "must be a GUID",
        },
        Invalid {
            name: "objectId not a GUID",
            base: ENTRA,
            change: c(vec![("spec/identity/entra/objectId", json!("123"))]),
            field: "spec.identity.entra.objectId",
            message: "must be a GUID",
        },
        Invalid {
            name: "reserved principal name",
            base: ENTRA,
            change: c(vec![(
                "spec/identity/entra/principalName",
                json!("azure_pg_admin"),
            )]),
            field: "spec.identity.entra.principalName",
            message: "reserved role",
        },
        Invalid {
            name: "reserved role name",
            base: PASSWORD,
            change: c(vec![(
                "spec/identity/password/roleName",
                json!("pg_monitor"),
            )]),
            field: "spec.identity.password.roleName",
            message: "reserved role",
        },
        Invalid {
            name: "identity resource id of another type",
            base: ENTRA,
            change: c(vec![(
                "spec/identity/entra/federatedCredential/identityResourceId",
                json!(project_id),
            )]),
            field: "spec.identity.entra.federatedCredential.identityResourceId",
            message: "user-assigned managed identity",
        },
        Invalid {
            name: "federated credential issuer over http",
            base: ENTRA,
            change: c(vec![(
                "spec/identity/entra/federatedCredential/issuer",
                json!("http://oidc.example.com/"),
            )]),
            field: "spec.identity.entra.federatedCredential.issuer",
            message: "https://",
        },
        Invalid {
            name: "project resource id of another type",
            base: ENTRA,
            change: c(vec![("spec/foundry/projectResourceId", json!(mi_id))]),
            field: "spec.foundry.projectResourceId",
            message: "Azure AI Foundry project",
        },
        Invalid {
            name: "project resource id with a bad subscription",
            base: ENTRA,
            change: c(vec![(
                "spec/foundry/projectResourceId",
                json!(
                    "/subscriptions/contoso/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/a/projects/p"
                ),
            )]),
            field: "spec.foundry.projectResourceId",
            message: "Azure AI Foundry project",
        },
        Invalid {
            name: "connection name too short",
            base: ENTRA,
            change: c(vec![("spec/foundry/connectionName", json!("x"))]),
            field: "spec.foundry.connectionName",
            message: "3 to 33",
        },
        Invalid {
            name: "non-SELECT privilege",
            base: ENTRA,
            change: c(vec![(
                "spec/access/grants/0/privileges",
                json!(["SELECT", "INSERT"]),
            )]),
            field: "spec.access.grants[0].privileges",
            message: "only SELECT",
        },
        Invalid {
            name: "empty tables",
            base: ENTRA,
            change: c(vec![("spec/access/grants/0/tables", json!([]))]),
            field: "spec.access.grants[0].tables",
            message: "must not be empty",
        },
        Invalid {
            name: "star mixed with names",
            base: ENTRA,
            change: c(vec![(
                "spec/access/grants/0/tables",
                json!(["*", "orders"]),
            )]),
            field: "spec.access.grants[0].tables",
            message: "only entry",
        },
        Invalid {
            name: "schema-qualified table name",
            base: ENTRA,
            change: c(vec![(
                "spec/access/grants/1/tables",
                json!(["reporting.monthly_sales"]),
            )]),
            field: "spec.access.grants[1].tables",
            message: "unqualified",
        },
        Invalid {
            name: "duplicate table",
            base: ENTRA,
            change: c(vec![("spec/access/grants/1/tables", json!(["a", "a"]))]),
            field: "spec.access.grants[1].tables[1]",
            message: "Duplicate value",
        },
        Invalid {
            name: "the same schema twice",
            base: ENTRA,
            change: c(vec![("spec/access/grants/1/schema", json!("public"))]),
            field: "spec.access.grants[1]",
            message: "Duplicate value",
        },
        Invalid {
            name: "no grants",
            base: ENTRA,
            change: c(vec![("spec/access/grants", json!([]))]),
            field: "spec.access.grants",
            message: "or define caller classes in callers",
        },
        Invalid {
            name: "caller classes without Entra caller authentication",
            base: PASSWORD,
            change: c(vec![(
                "spec/access/callers",
                json!([{"name": "support", "match": {"appRoles": ["Support.Read"]},
                        "grants": [{"schema": "public", "tables": ["*"]}]}]),
            )]),
            field: "spec.server.auth",
            message: "access.callers requires server.auth.entra",
        },
        Invalid {
            name: "a caller class with more grants than the rule cost budget allows",
            base: ENTRA,
            change: c(vec![(
                "spec/access/callers",
                json!([{"name": "support", "match": {"appRoles": ["Support.Read"]},
                        "grants": (0..17).map(|i| json!({"schema": format!("s{i}"), "tables": ["*"]})).collect::<Vec<_>>()}]),
            )]),
            field: "spec.access.callers[0].grants",
            message: "must have at most 16 items",
        },
        Invalid {
            name: "system schema",
            base: ENTRA,
            change: c(vec![("spec/access/grants/0/schema", json!("pg_catalog"))]),
            field: "spec.access.grants[0].schema",
            message: "system schemas",
        },
        Invalid {
            name: "maxRows 0",
            base: ENTRA,
            change: c(vec![("spec/server/limits/maxRows", json!(0))]),
            field: "spec.server.limits.maxRows",
            message: "between 1 and 100000",
        },
        Invalid {
            name: "maxRows above 100000",
            base: ENTRA,
            change: c(vec![("spec/server/limits/maxRows", json!(100_001))]),
            field: "spec.server.limits.maxRows",
            message: "between 1 and 100000",
        },
        Invalid {
            name: "statementTimeout 1h",
            base: ENTRA,
            change: c(vec![("spec/server/limits/statementTimeout", json!("1h"))]),
            field: "spec.server.limits.statementTimeout",
            message: "between 1ms and 10m",
        },
        Invalid {
            name: "statementTimeout not a duration",
            base: ENTRA,
            change: c(vec![("spec/server/limits/statementTimeout", json!("soon"))]),
            field: "spec.server.limits.statementTimeout",
            message: "such as 15s",
        },
        Invalid {
            name: "maxBytes 1Gi",
            base: ENTRA,
            change: c(vec![("spec/server/limits/maxBytes", json!("1Gi"))]),
            field: "spec.server.limits.maxBytes",
            message: "between 1Ki and 64Mi",
        },
        Invalid {
            name: "replicas 50",
            base: ENTRA,
            change: c(vec![("spec/server/replicas", json!(50))]),
            field: "spec.server.replicas",
            message: "20",
        },
        Invalid {
            name: "missing server auth",
            base: PASSWORD,
            change: c(vec![("spec/server/auth", Value::Null)]),
            field: "spec.server.auth",
            message: "Required value",
        },
        Invalid {
            name: "both auth modes",
            base: ENTRA,
            change: c(vec![(
                "spec/server/auth/none",
                json!({"acknowledgeInsecure": true}),
            )]),
            field: "spec.server.auth",
            message: "exactly one of auth.entra",
        },
        Invalid {
            name: "auth none without acknowledgement",
            base: PASSWORD,
            change: c(vec![("spec/server/auth/none", json!({}))]),
            field: "spec.server.auth.none.acknowledgeInsecure",
            message: "acknowledgeInsecure: true",
        },
        Invalid {
            name: "audience neither GUID nor api URI",
            base: ENTRA,
            change: c(vec![("spec/server/auth/entra/audience", json!("my-app"))]),
            field: "spec.server.auth.entra.audience",
            message: "api://",
        },
        Invalid {
            name: "no required roles",
            base: ENTRA,
            change: c(vec![("spec/server/auth/entra/requiredRoles", json!([]))]),
            field: "spec.server.auth.entra.requiredRoles",
            message: "at least 1",
        },
        Invalid {
            name: "caller allow-list not GUIDs",
            base: ENTRA,
            change: c(vec![(
                "spec/server/auth/entra/allowedCallerObjectIds",
                json!([guid, "alice"]),
            )]),
            field: "spec.server.auth.entra.allowedCallerObjectIds",
            message: "must be GUIDs",
        },
        Invalid {
            name: "foundry without entra auth",
            base: ENTRA,
            change: c(vec![(
                "spec/server/auth",
                json!({"none": {"acknowledgeInsecure": true}}),
            )]),
            field: "spec.server.auth",
            message: "foundry requires server.auth.entra",
        },
        Invalid {
            name: "foundry without public URL",
            base: ENTRA,
            change: c(vec![("spec/server/publicUrl", Value::Null)]),
            field: "spec.server.publicUrl",
            message: "foundry requires server.publicUrl",
        },
        Invalid {
            name: "foundry with an http public URL",
            base: ENTRA,
            change: c(vec![(
                "spec/server/publicUrl",
                json!("http://mcp.contoso.com/mcp"),
            )]),
            field: "spec.server.publicUrl",
            message: "https://",
        },
        Invalid {
            name: "name too long for the Service <name>-mcp",
            base: PASSWORD,
            change: c(vec![("metadata/name", json!("a".repeat(60)))]),
            field: "metadata.name",
            message: "at most 59",
        },
        Invalid {
            name: "name with a dot (not a DNS-1035 label)",
            base: PASSWORD,
            change: c(vec![("metadata/name", json!("sales.eu"))]),
            field: "metadata.name",
            message: "starting with a letter",
        },
        Invalid {
            name: "allowed function in a system schema",
            base: PASSWORD,
            change: c(vec![(
                "spec/access/functions",
                json!([{"schema": "pg_catalog", "name": "pg_read_file"}]),
            )]),
            field: "spec.access.functions[0].schema",
            message: "must not be a system schema",
        },
        Invalid {
            name: "allowed function with its arguments",
            base: PASSWORD,
            change: c(vec![(
                "spec/access/functions",
                json!([{"schema": "public", "name": "order_total(int)"}]),
            )]),
            field: "spec.access.functions[0].name",
            message: "the function's name alone",
        },
        Invalid {
            name: "public URL not a URL",
            base: PASSWORD,
            change: c(vec![("spec/server/publicUrl", json!("mcp.contoso.com"))]),
            field: "spec.server.publicUrl",
            message: "absolute http:// or https:// URL",
        },
        Invalid {
            name: "audit statements mode not one of the three",
            base: PASSWORD,
            change: c(vec![("spec/server/audit/statements", json!("verbose"))]),
            field: "spec.server.audit.statements",
            message: r#"supported values: "full", "redacted", "fingerprint""#,
        },
        Invalid {
            name: "untrustedDataFraming not a boolean",
            base: PASSWORD,
            change: c(vec![(
                "spec/server/results/untrustedDataFraming",
                json!("yes"),
            )]),
            field: "spec.server.results.untrustedDataFraming",
            message: "must be of type boolean",
        },
        Invalid {
            name: "OTLP endpoint without a scheme",
            base: PASSWORD,
            change: c(vec![(
                "spec/server/telemetry",
                json!({"otlpEndpoint": "otel-collector:4318"}),
            )]),
            field: "spec.server.telemetry.otlpEndpoint",
            message: "otlpEndpoint must be an absolute http:// or https:// URL",
        },
        Invalid {
            name: "OTLP endpoint over gRPC",
            base: PASSWORD,
            change: c(vec![(
                "spec/server/telemetry",
                json!({"otlpEndpoint": "grpc://otel-collector:4317"}),
            )]),
            field: "spec.server.telemetry.otlpEndpoint",
            message: "otlpEndpoint must be an absolute http:// or https:// URL",
        },
        Invalid {
            name: "OTLP endpoint without a host",
            base: PASSWORD,
            change: c(vec![(
                "spec/server/telemetry",
                json!({"otlpEndpoint": "http:///v1"}),
            )]),
            field: "spec.server.telemetry.otlpEndpoint",
            message: "with a host",
        },
        Invalid {
            name: "OTLP endpoint with a query",
            base: PASSWORD,
            change: c(vec![(
                "spec/server/telemetry",
                json!({"otlpEndpoint": "https://otlp.example.com/?tenant=a"}),
            )]),
            field: "spec.server.telemetry.otlpEndpoint",
            message: "no query or fragment",
        },
        Invalid {
            name: "telemetry without an OTLP endpoint",
            base: PASSWORD,
            change: c(vec![(
                "spec/server/telemetry",
                json!({"samplingPercent": 50}),
            )]),
            field: "spec.server.telemetry.otlpEndpoint",
            message: "Required value",
        },
        Invalid {
            name: "samplingPercent 101",
            base: PASSWORD,
            change: c(vec![(
                "spec/server/telemetry",
                json!({"otlpEndpoint": "http://otel-collector:4318", "samplingPercent": 101}),
            )]),
            field: "spec.server.telemetry.samplingPercent",
            message: "less than or equal to 100",
        },
        Invalid {
            name: "samplingPercent below 0",
            base: PASSWORD,
            change: c(vec![(
                "spec/server/telemetry",
                json!({"otlpEndpoint": "http://otel-collector:4318", "samplingPercent": -1}),
            )]),
            field: "spec.server.telemetry.samplingPercent",
            message: "greater than or equal to 0",
        },
        Invalid {
            name: "headers Secret without a key",
            base: PASSWORD,
            change: c(vec![(
                "spec/server/telemetry",
                json!({"otlpEndpoint": "http://otel-collector:4318",
                       "headersSecretRef": {"name": "otel-headers"}}),
            )]),
            field: "spec.server.telemetry.headersSecretRef.key",
            message: "Required value",
        },
        Invalid {
            name: "resource attribute overriding the binding's own",
            base: PASSWORD,
            change: c(vec![(
                "spec/server/telemetry",
                json!({"otlpEndpoint": "http://otel-collector:4318",
                       "resourceAttributes": {"pgmcp.binding": "other"}}),
            )]),
            field: "spec.server.telemetry.resourceAttributes",
            message: "the operator sets them",
        },
        Invalid {
            name: "resource attribute key with a comma",
            base: PASSWORD,
            change: c(vec![(
                "spec/server/telemetry",
                json!({"otlpEndpoint": "http://otel-collector:4318",
                       "resourceAttributes": {"team,x": "a"}}),
            )]),
            field: "spec.server.telemetry.resourceAttributes",
            message: "keys must be 1 to 128 letters",
        },
        Invalid {
            name: "17 resource attributes",
            base: PASSWORD,
            change: c(vec![(
                "spec/server/telemetry",
                json!({"otlpEndpoint": "http://otel-collector:4318",
                       "resourceAttributes": (0..17).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            )]),
            field: "spec.server.telemetry.resourceAttributes",
            message: "must have at most 16 items",
        },
        Invalid {
            name: "resource attribute value over 256 characters",
            base: PASSWORD,
            change: c(vec![(
                "spec/server/telemetry",
                json!({"otlpEndpoint": "http://otel-collector:4318",
                       "resourceAttributes": {"team": "a".repeat(257)}}),
            )]),
            field: "spec.server.telemetry.resourceAttributes.team",
            message: "may not be more than 256",
        },
    ]
}

fn rejection(err: kube::Error) -> Box<kube::core::Status> {
    match err {
        kube::Error::Api(status) => status,
        other => panic!("expected an API rejection, got {other}"),
    }
}

/// Asserts a 422 whose causes name `field` and whose message contains `message`.
fn assert_names_field(case: &str, status: &kube::core::Status, field: &str, message: &str) {
    assert_eq!(
        status.code, 422,
        "{case}: expected 422 Invalid, got {status:?}"
    );
    if field == "metadata.name" {
        // A root CEL rule may not carry a fieldPath into metadata: the apiserver reports it
        // without causes, and our message names the field itself.
        assert!(
            status.message.contains("metadata.name must be") && status.message.contains(message),
            "{case}: {}",
            status.message
        );
        return;
    }
    let causes = status
        .details
        .as_ref()
        .map(|d| d.causes.as_slice())
        .unwrap_or_default();
    let named = causes
        .iter()
        .any(|c| c.field == field && c.message.contains(message));
    assert!(
        named,
        "{case}: no cause for field {field} with message containing {message:?}; \
         the apiserver said: {}\ncauses: {causes:#?}",
        status.message
    );
    assert!(
        status.message.contains(field),
        "{case}: message names {field}: {}",
        status.message
    );
}

#[tokio::test]
async fn invalid_bindings_are_rejected_by_the_apiserver_naming_the_field() {
    let ns = TestEnv::shared()
        .namespace("invalid")
        .await
        .expect("namespace");
    let api: Api<PostgresMcpBinding> = ns.api();
    let corpus = invalid_corpus();
    assert!(corpus.len() >= 25, "the corpus covers every rule");
    for base in ["azure-entra-foundry.yaml", "password.yaml"] {
        let doc: PostgresMcpBinding =
            serde_json::from_value(example(base)).expect("example fits the type");
        api.create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &doc,
        )
        .await
        .unwrap_or_else(|e| panic!("base {base} must be valid: {e}"));
    }
    for (i, case) in corpus.iter().enumerate() {
        let mut doc = example(case.base);
        set(&mut doc, "metadata/name", json!(format!("invalid-{i}")));
        for (path, value) in case.change {
            set(&mut doc, path, value.clone());
        }
        let request = http::Request::post(format!(
            "/apis/pgmcp.dev/v1alpha1/namespaces/{}/postgresmcpbindings",
            ns.name
        ))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&doc).expect("json"))
        .expect("request");
        let err = ns
            .client
            .request::<Value>(request)
            .await
            .expect_err(&format!(
                "{}: the apiserver accepted an invalid binding",
                case.name
            ));
        assert_names_field(case.name, &rejection(err), case.field, case.message);
        // Nothing was stored.
        assert!(
            api.get_opt(&format!("invalid-{i}"))
                .await
                .expect("get")
                .is_none(),
            "{}: the rejected binding exists",
            case.name
        );
    }
}

#[tokio::test]
async fn results_audit_and_telemetry_take_their_defaults_and_a_full_telemetry_block_is_accepted() {
    let ns = TestEnv::shared()
        .namespace("telemetry")
        .await
        .expect("namespace");
    let api: Api<PostgresMcpBinding> = ns.api();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let create = |doc: Value| {
        let api = api.clone();
        let dry_run = dry_run.clone();
        async move {
            let binding: PostgresMcpBinding = serde_json::from_value(doc).expect("fits the type");
            api.create(&dry_run, &binding).await
        }
    };

    // Left out: framing on, full statements, no telemetry, as the apiserver stores it.
    let stored = create(example("password.yaml"))
        .await
        .expect("the example is accepted");
    let stored = serde_json::to_value(&stored.spec.server).expect("json");
    assert_eq!(stored["results"], json!({"untrustedDataFraming": true}));
    assert_eq!(stored["audit"], json!({"statements": "full"}));
    assert!(stored.get("telemetry").is_none(), "{stored}");

    // Everything set, at its bounds: 16 attributes with the longest key and value, 0 %.
    let mut doc = example("password.yaml");
    let attributes: serde_json::Map<String, Value> = (0..16)
        .map(|i| {
            (
                format!("{i:02}{}", "k".repeat(126)),
                json!("é,=%".repeat(64)),
            )
        })
        .collect();
    set(
        &mut doc,
        "spec/server/telemetry",
        json!({
            "otlpEndpoint": format!("https://otlp.example.com/{}", "p".repeat(2000)),
            "headersSecretRef": {"name": "otel-headers", "key": "headers"},
            "samplingPercent": 0,
            "resourceAttributes": attributes,
        }),
    );
    set(
        &mut doc,
        "spec/server/audit/statements",
        json!("fingerprint"),
    );
    set(
        &mut doc,
        "spec/server/results/untrustedDataFraming",
        json!(false),
    );
    let stored = create(doc)
        .await
        .expect("a full telemetry block is accepted");
    let server = stored.spec.server;
    let telemetry = server.telemetry.expect("telemetry kept");
    assert_eq!(telemetry.sampling_percent, 0);
    assert_eq!(telemetry.resource_attributes.len(), 16);
    assert_eq!(
        server.audit.statements,
        pgmcp_crds::v1alpha1::AuditStatements::Fingerprint
    );
    assert!(!server.results.untrusted_data_framing);

    // samplingPercent defaults to 100.
    let mut doc = example("password.yaml");
    set(
        &mut doc,
        "spec/server/telemetry",
        json!({"otlpEndpoint": "http://otel-collector.observability.svc:4318"}),
    );
    let stored = create(doc).await.expect("an endpoint alone is accepted");
    assert_eq!(
        stored
            .spec
            .server
            .telemetry
            .expect("telemetry")
            .sampling_percent,
        100
    );
}

#[tokio::test]
async fn immutable_fields_cannot_change_and_the_stored_binding_is_kept() {
    let ns = TestEnv::shared()
        .namespace("immutable")
        .await
        .expect("namespace");
    let api: Api<PostgresMcpBinding> = ns.api();
    let entra: PostgresMcpBinding =
        serde_json::from_value(example("azure-entra-foundry.yaml")).expect("example");
    let password: PostgresMcpBinding =
        serde_json::from_value(example("password.yaml")).expect("example");
    let entra = api
        .create(&PostParams::default(), &entra)
        .await
        .expect("create entra binding");
    let password = api
        .create(&PostParams::default(), &password)
        .await
        .expect("create password binding");

    type Change = fn(&mut PostgresMcpBinding);
    let cases: [(&str, &PostgresMcpBinding, Change, &str, &str); 7] = [
        (
            "moving to another server",
            &password,
            |b| b.spec.postgres.host = "other.postgres.example".into(),
            "spec.postgres.host",
            "host is immutable",
        ),
        (
            "changing the port",
            &password,
            |b| b.spec.postgres.port = 6432,
            "spec.postgres.port",
            "port is immutable",
        ),
        (
            "changing principalName",
            &entra,
            |b| {
                b.spec
                    .identity
                    .entra
                    .as_mut()
                    .expect("entra")
                    .principal_name = "other-mcp".into();
            },
            "spec.identity.entra.principalName",
            "principalName is immutable",
        ),
        (
            "changing objectId",
            &entra,
            |b| {
                b.spec.identity.entra.as_mut().expect("entra").object_id =
                    Some("99999999-9999-9999-9999-999999999999".into());
            },
            "spec.identity.entra.objectId",
            "objectId is immutable",
        ),
        (
            "switching entra to password",
            &entra,
            |b| {
                b.spec.identity.entra = None;
                b.spec.identity.password = Some(pgmcp_crds::v1alpha1::PasswordIdentity {
                    role_name: "sales_mcp".into(),
                    secret_name: None,
                });
                b.spec.postgres.admin.entra = None;
                b.spec.postgres.admin.password_secret_ref =
                    Some(serde_json::from_value(json!({"name": "pg-admin"})).expect("ref"));
            },
            "spec.identity",
            "identity mode cannot change",
        ),
        (
            "changing roleName",
            &password,
            |b| {
                b.spec
                    .identity
                    .password
                    .as_mut()
                    .expect("password")
                    .role_name = "shop_reader".into();
            },
            "spec.identity.password.roleName",
            "roleName is immutable",
        ),
        (
            "changing connectionName",
            &entra,
            |b| {
                b.spec.foundry.as_mut().expect("foundry").connection_name = "sales-pg".into();
            },
            "spec.foundry.connectionName",
            "connectionName is immutable",
        ),
    ];
    for (case, stored, change, field, message) in cases {
        let mut updated = stored.clone();
        change(&mut updated);
        let err = api
            .replace(
                stored.metadata.name.as_deref().expect("name"),
                &PostParams::default(),
                &updated,
            )
            .await
            .expect_err(&format!("{case}: the apiserver accepted it"));
        assert_names_field(case, &rejection(err), field, message);
        let now = api
            .get(stored.metadata.name.as_deref().expect("name"))
            .await
            .expect("get");
        assert_eq!(now.spec, stored.spec, "{case}: the stored binding changed");
    }

    // Mutable fields still change.
    let mut scaled = entra.clone();
    scaled.spec.server.replicas = 3;
    let scaled = api
        .replace("sales", &PostParams::default(), &scaled)
        .await
        .expect("replicas can change");
    assert_eq!(scaled.spec.server.replicas, 3);
    api.delete("sales", &DeleteParams::default())
        .await
        .expect("delete");
}
