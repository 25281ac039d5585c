//! `foundry.assignAppRole` through the operator, without Azure: the operator (with its own
//! workload identity, exchanged at the Entra fake) finds the Foundry project's managed identity
//! through the ARM fake and gives it the server app's role through the Graph fake. Without the
//! Graph permission the binding says so and stalls; with it, exactly one assignment is made,
//! tokens Entra issues to the project identity for the server carry the role, a steady state
//! writes nothing, and deleting the binding takes the assignment back. And, with a plain HTTP
//! client, how Graph's lists page: `$top`, `@odata.nextLink`, `$skiptoken`.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_identity::TokenSource as _;
use pgmcp_tests::arm::{ArmFake, ClientSecretSource, Role};
use pgmcp_tests::bindings::{
    condition, create_admin_secret, delete_and_wait, kubectl_apply, wait_condition,
};
use pgmcp_tests::entra::{App, EntraFake};
use pgmcp_tests::graph::{
    APP_ROLE_ASSIGNMENT_READ_WRITE_ALL, APPLICATION_READ_ALL, AppRole, Assignment, GraphFake,
};
use pgmcp_tests::operator::{Operator, WorkloadIdentity};
use pgmcp_tests::{Postgres, TestEnv};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const TENANT: &str = "22222222-2222-4222-8222-222222222222";
const SUBSCRIPTION: &str = "/subscriptions/55555555-5555-4555-8555-555555555555";
const OPERATOR_CLIENT_ID: &str = "66666666-6666-4666-8666-666666666666";
const OPERATOR_OBJECT_ID: &str = "77777777-7777-4777-8777-777777777777";
/// The MCP server's app registration and its service principal.
const SERVER_APP_ID: &str = "44444444-4444-4444-8444-444444444444";
const SERVER_SP_ID: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
const MCP_READ_ID: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";
/// The Foundry project's system-assigned identity.
const PROJECT_CLIENT_ID: &str = "88888888-8888-4888-8888-888888888888";
const PROJECT_OBJECT_ID: &str = "99999999-9999-4999-8999-999999999999";
const PROJECT_SECRET: &str = "project-identity-secret";

/// The `roles` claim of a token Entra issues to the project identity for the server app.
async fn project_token_roles(entra: &EntraFake) -> Value {
    let ca = std::fs::read(entra.ca_cert()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let answer: Value = http
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", entra.url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", PROJECT_CLIENT_ID),
            ("client_secret", PROJECT_SECRET),
            ("scope", &format!("api://{SERVER_APP_ID}/.default")),
        ])
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = answer["access_token"].as_str().unwrap();
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .unwrap()
        .claims;
    claims["roles"].clone()
}

async fn touch(bindings: &Api<PostgresMcpBinding>, value: &str) {
    bindings
        .patch(
            "sales",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": value}}})),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_app_role_gives_the_project_identity_the_server_role_and_takes_it_back() {
    let env = TestEnv::shared();
    let pg = Postgres::shared();
    let ns = env.namespace("graph").await.unwrap();
    let db = pg.create_database("graph").await.unwrap();
    create_admin_secret(&ns, pg);

    let entra = Arc::new(EntraFake::start().await.unwrap());
    entra.add_tenant(TENANT).unwrap();
    for (client_id, object_id, secret) in [
        (SERVER_APP_ID, SERVER_SP_ID, None),
        (
            PROJECT_CLIENT_ID,
            PROJECT_OBJECT_ID,
            Some(PROJECT_SECRET.to_owned()),
        ),
    ] {
        entra
            .register_app(
                TENANT,
                App {
                    client_id: client_id.into(),
                    object_id: object_id.into(),
                    display_name: client_id.into(),
                    secret,
                    access_token_version: 1,
                    ..App::default()
                },
            )
            .unwrap();
    }
    assert_eq!(
        project_token_roles(&entra).await,
        Value::Null,
        "no role yet"
    );

    let arm = ArmFake::start(entra.clone(), TENANT).await.unwrap();
    let project_id = format!(
        "{SUBSCRIPTION}/resourceGroups/rg-agents/providers/Microsoft.CognitiveServices/accounts/contoso-ai/projects/sales-agents"
    );
    arm.add_project_with_identity(&project_id, PROJECT_OBJECT_ID)
        .unwrap();
    arm.assign_role(OPERATOR_OBJECT_ID, SUBSCRIPTION, Role::Contributor);

    let graph = GraphFake::start(entra.clone(), TENANT).await.unwrap();
    graph.add_service_principal(
        SERVER_APP_ID,
        SERVER_SP_ID,
        &[AppRole {
            id: MCP_READ_ID.into(),
            value: "MCP.Read".into(),
        }],
    );
    graph.add_service_principal(PROJECT_CLIENT_ID, PROJECT_OBJECT_ID, &[]);
    // Reading is allowed, assigning is not (yet).
    graph.grant(OPERATOR_OBJECT_ID, APPLICATION_READ_ALL);

    let arm_flag = format!("--arm-endpoint={}", arm.url());
    let graph_flag = format!("--graph-endpoint={}", graph.url());
    let identity = WorkloadIdentity {
        entra: &entra,
        tenant: TENANT,
        client_id: OPERATOR_CLIENT_ID,
        object_id: OPERATOR_OBJECT_ID,
        trust: &[entra.ca_cert(), arm.ca_cert(), graph.ca_cert()],
    };
    let operator = Operator::start_with_workload_identity(
        env,
        &ns,
        "op-graph",
        &identity,
        &[&arm_flag, &graph_flag],
    )
    .await
    .unwrap();

    let binding = json!({
        "apiVersion": "pgmcp.dev/v1alpha1",
        "kind": "PostgresMcpBinding",
        "metadata": {"name": "sales"},
        "spec": {
            "postgres": {
                "host": pg.host(), "port": pg.port(), "database": db.name, "sslMode": "prefer",
                "admin": {"passwordSecretRef": {"name": "pg-admin"}}
            },
            "identity": {"password": {"roleName": format!("{}_mcp", db.name)}},
            "access": {"grants": [{"schema": "public", "tables": ["*"]}]},
            "server": {
                "auth": {"entra": {
                    "tenantId": TENANT, "audience": SERVER_APP_ID, "requiredRoles": ["MCP.Read"],
                    "authorityHost": entra.url()
                }},
                "publicUrl": "https://mcp.contoso.test/agents/sales/mcp"
            },
            "foundry": {
                "projectResourceId": project_id, "connectionName": "sales-postgres",
                "assignAppRole": true
            }
        }
    });
    kubectl_apply(&ns, &binding.to_string());
    let bindings: Api<PostgresMcpBinding> = ns.api();

    // Without AppRoleAssignment.ReadWrite.All: Graph's refusal, named, and the binding stalls.
    let refused = wait_condition(
        &bindings,
        "sales",
        "FoundryConnectionReady",
        "False",
        Some("GraphAuthorizationRequestDenied"),
        WAIT,
    )
    .await;
    let message = condition(&refused, "FoundryConnectionReady")
        .unwrap()
        .message;
    assert!(
        message.contains("Authorization_RequestDenied") && message.contains("MCP.Read"),
        "{message}"
    );
    let stalled = condition(&refused, "Stalled").unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "GraphAuthorizationRequestDenied")
    );
    assert!(graph.assignments().is_empty());
    assert!(
        arm.resource(&format!("{project_id}/connections/sales-postgres"))
            .is_some()
    );

    // With it, the next reconcile assigns the role once.
    graph.grant(OPERATOR_OBJECT_ID, APP_ROLE_ASSIGNMENT_READ_WRITE_ALL);
    touch(&bindings, "1").await;
    let ready = wait_condition(
        &bindings,
        "sales",
        "FoundryConnectionReady",
        "True",
        None,
        WAIT,
    )
    .await;
    let message = condition(&ready, "FoundryConnectionReady").unwrap().message;
    assert!(message.contains("holds app role MCP.Read"), "{message}");
    let assignments = graph.assignments();
    assert_eq!(assignments.len(), 1, "{assignments:?}");
    let Assignment {
        principal_id,
        resource_id,
        app_role_id,
        ..
    } = assignments[0].clone();
    assert_eq!(
        (
            principal_id.as_str(),
            resource_id.as_str(),
            app_role_id.as_str()
        ),
        (PROJECT_OBJECT_ID, SERVER_SP_ID, MCP_READ_ID)
    );
    // One refused POST before the permission, one accepted after it.
    let created = |graph: &GraphFake| {
        graph
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.status == 201)
            .count()
    };
    assert_eq!(created(&graph), 1);
    let posts = graph.count("POST", "/");
    assert_eq!(project_token_roles(&entra).await, json!(["MCP.Read"]));

    // A steady state reads only: a whole reconcile (it read the assignments) and no POST.
    let reconciles = operator.reconciles().await;
    let lists = graph.count("GET", "/appRoleAssignedTo");
    touch(&bindings, "2").await;
    operator.wait_reconciles(reconciles + 1.0, WAIT).await;
    assert!(
        graph.count("GET", "/appRoleAssignedTo") > lists,
        "the assignments were read"
    );
    assert_eq!(
        graph.count("POST", "/"),
        posts,
        "unchanged state wrote to Graph: {:?}",
        graph.requests()
    );

    // Deleting the binding takes the role back (and the connection).
    delete_and_wait(&bindings, "sales", WAIT).await;
    assert!(graph.assignments().is_empty(), "assignment deleted");
    assert_eq!(graph.count("DELETE", "/appRoleAssignedTo/"), 1);
    assert_eq!(project_token_roles(&entra).await, Value::Null);
    assert!(
        arm.resource(&format!("{project_id}/connections/sales-postgres"))
            .is_none()
    );
}

/// The operator's own app, for a client that reads Graph directly.
const READER_SECRET: &str = "graph-reader-secret";

/// An HTTPS client trusting the Graph fake, and a Graph token of the operator's app.
async fn graph_client(entra: &EntraFake, graph: &GraphFake) -> (reqwest::Client, String) {
    let ca = std::fs::read(graph.ca_cert()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let source = ClientSecretSource::new(entra, TENANT, OPERATOR_CLIENT_ID, READER_SECRET).unwrap();
    let token = source
        .fetch(&format!("{}/.default", graph.url()))
        .await
        .unwrap();
    (http, token.secret().to_owned())
}

/// GETs `url` and every `@odata.nextLink` after it, checking each link stays on the fake's
/// origin and path; the pages' items.
async fn all_pages(http: &reqwest::Client, token: &str, url: &str) -> Vec<Vec<Value>> {
    let (origin_and_path, _) = url.split_once('?').unwrap_or((url, ""));
    let mut pages = Vec::new();
    let mut next = Some(url.to_owned());
    while let Some(url) = next.take() {
        let page: Value = http
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        pages.push(page["value"].as_array().unwrap().clone());
        if let Some(link) = page["@odata.nextLink"].as_str() {
            assert!(
                link.starts_with(&format!("{origin_and_path}?")) && link.contains("$skiptoken="),
                "{link}"
            );
            next = Some(link.to_owned());
        }
    }
    pages
}

fn principals(page: &[Value]) -> Vec<&str> {
    page.iter()
        .map(|a| a["principalId"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn graph_lists_come_in_pages_and_a_client_gets_all_by_following_next_links() {
    let entra = Arc::new(EntraFake::start().await.unwrap());
    entra.add_tenant(TENANT).unwrap();
    entra
        .register_app(
            TENANT,
            App {
                client_id: OPERATOR_CLIENT_ID.into(),
                object_id: OPERATOR_OBJECT_ID.into(),
                display_name: "pgmcp-operator".into(),
                secret: Some(READER_SECRET.into()),
                access_token_version: 1,
                ..App::default()
            },
        )
        .unwrap();
    let graph = GraphFake::start(entra.clone(), TENANT).await.unwrap();
    graph.add_service_principal(
        SERVER_APP_ID,
        SERVER_SP_ID,
        &[AppRole {
            id: MCP_READ_ID.into(),
            value: "MCP.Read".into(),
        }],
    );
    graph.add_service_principal(PROJECT_CLIENT_ID, PROJECT_OBJECT_ID, &[]);
    graph.grant(OPERATOR_OBJECT_ID, APPLICATION_READ_ALL);
    graph.grant(OPERATOR_OBJECT_ID, APP_ROLE_ASSIGNMENT_READ_WRITE_ALL);
    let (http, token) = graph_client(&entra, &graph).await;

    // Seven other clients hold the role before the project gets it.
    let others = graph.add_assignments(SERVER_SP_ID, MCP_READ_ID, 7).unwrap();
    let list = format!(
        "{}/v1.0/servicePrincipals/{SERVER_SP_ID}/appRoleAssignedTo",
        graph.url()
    );
    let created = http
        .post(&list)
        .bearer_auth(&token)
        .json(&json!({
            "principalId": PROJECT_OBJECT_ID, "resourceId": SERVER_SP_ID, "appRoleId": MCP_READ_ID
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // Three to a page: the project's assignment is on page 3, found only through the links.
    graph.set_max_page_size(Some(3));
    let pages = all_pages(&http, &token, &list).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 2]);
    let mut expected: Vec<&str> = others.iter().map(|a| a.principal_id.as_str()).collect();
    expected.push(PROJECT_OBJECT_ID);
    assert_eq!(principals(&pages.concat()), expected, "all, in order, once");
    assert_eq!(principals(&pages[2]).last(), Some(&PROJECT_OBJECT_ID));
    assert_eq!(graph.count("GET", "/appRoleAssignedTo"), 3);

    // `$top` asks for fewer; the links keep it (the cap only ever lowers it).
    let pages = all_pages(&http, &token, &format!("{list}?$top=2")).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2, 2]);
    let first: Value = http
        .get(format!("{list}?$top=2"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link = first["@odata.nextLink"].as_str().unwrap();
    assert!(link.contains("$top=2&$skiptoken="), "{link}");

    // Items added between pages neither shift nor repeat what was read: they come at the end.
    let first: Value = http
        .get(&list)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let later = graph.add_assignments(SERVER_SP_ID, MCP_READ_ID, 2).unwrap();
    let rest = all_pages(&http, &token, first["@odata.nextLink"].as_str().unwrap()).await;
    let rest = rest.concat();
    let mut seen = principals(first["value"].as_array().unwrap());
    seen.extend(principals(&rest));
    expected.extend(later.iter().map(|a| a.principal_id.as_str()));
    assert_eq!(seen, expected);

    // Without the cap: Graph's default page of up to 100 holds them all.
    graph.set_max_page_size(None);
    let pages = all_pages(&http, &token, &list).await;
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].len(), 10);

    // Graph's bounds on `$top`, and tokens it never issued.
    for query in ["$top=0", "$top=1000", "$skiptoken=not-a-token"] {
        let refused = http
            .get(format!("{list}?{query}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "{query}");
    }

    // A nextLink is checked like any request: without the permission, 403.
    graph.set_max_page_size(Some(3));
    let first: Value = http
        .get(&list)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let next = first["@odata.nextLink"].as_str().unwrap();
    graph.revoke_all(OPERATOR_OBJECT_ID);
    let denied = http.get(next).bearer_auth(&token).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    let anonymous = http.get(next).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}
