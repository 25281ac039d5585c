//! The operator's Azure library (`pgmcp_operator::azure`) against the ARM fake and the Entra
//! fake, over HTTPS: the operator's token is a real Entra-fake token for ARM, checked by the ARM
//! fake's signature, audience and role checks. Shows GET-compare-PUT (no PUT when unchanged),
//! updates, Retry-After honoured within bounds, long-running operations, ARM's errors surfaced,
//! ARM's concurrent-credential-writes 409 retried until the write goes through, deletes that
//! tolerate "already gone" (ARM's 204), every api-version the resource providers serve, and —
//! with the real test apiserver — a federated credential written through ARM making a
//! ServiceAccount token exchange work (once it has propagated, and no more after delete), with
//! Entra's refusals as it words them today.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::http::Method;
use base64::Engine as _;
use pgmcp_identity::{AccessToken, TokenProvider, TokenSource};
use pgmcp_operator::azure::arm::{ArmClient, Error, RetryPolicy};
use pgmcp_operator::azure::{AzureSettings, Change, fic, foundry};
use pgmcp_operator::metrics::Metrics;
use pgmcp_tests::TestEnv;
use pgmcp_tests::arm::{
    ArmFake, CONNECTION_API_VERSIONS, ClientSecretSource, FIC_API_VERSIONS, Fault, LongRunning,
    LroStyle, Role,
};
use pgmcp_tests::entra::{App, EntraFake, service_account_token};
use serde_json::{Value, json};

const TENANT: &str = "22222222-2222-4222-8222-222222222222";
const SUBSCRIPTION: &str = "77777777-7777-4777-8777-777777777777";
/// The operator's own managed identity.
const OPERATOR_CLIENT_ID: &str = "55555555-5555-4555-8555-555555555555";
const OPERATOR_OBJECT_ID: &str = "66666666-6666-4666-8666-666666666666";
const OPERATOR_SECRET: &str = "operator-test-secret";
/// The binding's managed identity.
const MI_CLIENT_ID: &str = "11111111-1111-4111-8111-111111111111";
const MI_OBJECT_ID: &str = "33333333-3333-4333-8333-333333333333";
const SERVER_APP: &str = "44444444-4444-4444-8444-444444444444";
const ISSUER: &str = "https://oidc.prod-aks.azure.com/tenant/issuer/";

fn resource_group() -> String {
    format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/agents-rg")
}

fn identity_id() -> String {
    format!(
        "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/sales-mcp",
        resource_group()
    )
}

fn project_id() -> String {
    format!(
        "{}/providers/Microsoft.CognitiveServices/accounts/contoso-ai/projects/sales",
        resource_group()
    )
}

/// Short waits so failures show fast; the bounds are what the defaults have, scaled down.
fn fast() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        min_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
        max_elapsed: Duration::from_secs(10),
        poll_interval: Duration::from_millis(100),
        operation_timeout: Duration::from_secs(20),
        request_timeout: Duration::from_secs(2),
    }
}

struct Azure {
    entra: Arc<EntraFake>,
    arm: ArmFake,
    client: ArmClient,
    metrics: Arc<Metrics>,
}

/// The fakes, an identity and a project in one resource group, the operator's app with `role`
/// on the resource group (if any), and an ARM client for the operator.
async fn azure(role: Option<Role>) -> Azure {
    let entra = Arc::new(EntraFake::start().await.unwrap());
    entra.add_tenant(TENANT).unwrap();
    entra
        .register_app(
            TENANT,
            App {
                client_id: OPERATOR_CLIENT_ID.into(),
                object_id: OPERATOR_OBJECT_ID.into(),
                display_name: "pgmcp-operator".into(),
                secret: Some(OPERATOR_SECRET.into()),
                access_token_version: 1,
                ..App::default()
            },
        )
        .unwrap();
    let arm = ArmFake::start(entra.clone(), TENANT).await.unwrap();
    arm.add_identity(&identity_id(), MI_CLIENT_ID, MI_OBJECT_ID)
        .unwrap();
    arm.add_project(&project_id()).unwrap();
    if let Some(role) = role {
        arm.assign_role(OPERATOR_OBJECT_ID, &resource_group(), role);
    }
    let source =
        ClientSecretSource::new(&entra, TENANT, OPERATOR_CLIENT_ID, OPERATOR_SECRET).unwrap();
    let metrics = Arc::new(Metrics::default());
    let client = client_for(
        &arm,
        TokenProvider::new(Arc::new(source), arm.scope()),
        metrics.clone(),
    );
    Azure {
        entra,
        arm,
        client,
        metrics,
    }
}

fn client_for(arm: &ArmFake, token: TokenProvider, metrics: Arc<Metrics>) -> ArmClient {
    let settings = AzureSettings {
        arm_endpoint: arm.url().to_owned(),
        ..AzureSettings::default()
    };
    ArmClient::new(settings, token, metrics)
        .unwrap()
        .with_root_certificates(&std::fs::read(arm.ca_cert()).unwrap())
        .unwrap()
        .with_retry_policy(fast())
}

fn desired_fic(issuer: &str) -> fic::Desired {
    fic::Desired {
        identity_resource_id: identity_id(),
        name: fic::name_for("agents", "sales"),
        issuer: issuer.to_owned(),
        subject: fic::subject("agents", "sales-mcp"),
    }
}

fn fic_id() -> String {
    fic::resource_id(&identity_id(), &fic::name_for("agents", "sales"))
}

fn desired_connection(target: &str) -> foundry::Desired {
    foundry::Desired {
        project_resource_id: project_id(),
        connection_name: "sales-postgres".into(),
        audience: SERVER_APP.into(),
        target: target.to_owned(),
    }
}

fn connection_id() -> String {
    foundry::resource_id(&project_id(), "sales-postgres")
}

/// The statuses the fake answered for `method` on `path`, in order.
fn statuses(arm: &ArmFake, method: &str, path: &str) -> Vec<u16> {
    arm.requests()
        .into_iter()
        .filter(|r| r.method == method && r.path.eq_ignore_ascii_case(path))
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn federated_credential_is_created_then_left_alone_then_updated() {
    let az = azure(Some(Role::Contributor)).await;
    let (id, change) = fic::ensure(&az.client, &desired_fic(ISSUER)).await.unwrap();
    assert_eq!(change, Change::Created);
    assert_eq!(id, fic_id());
    let stored = az.arm.resource(&fic_id()).unwrap();
    assert_eq!(
        stored["properties"],
        json!({"issuer": ISSUER, "subject": "system:serviceaccount:agents:sales-mcp", "audiences": ["api://AzureADTokenExchange"]})
    );
    assert_eq!(statuses(&az.arm, "PUT", &fic_id()), [201]);

    // Unchanged: one more GET, no PUT.
    let (_, change) = fic::ensure(&az.client, &desired_fic(ISSUER)).await.unwrap();
    assert_eq!(change, Change::Unchanged);
    assert_eq!(statuses(&az.arm, "GET", &fic_id()), [404, 200]);
    assert_eq!(az.arm.count("PUT", &fic_id()), 1);

    // A new issuer (the cluster was recreated): one PUT with it.
    let moved = "https://oidc.prod-aks.azure.com/tenant/new-issuer/";
    let (_, change) = fic::ensure(&az.client, &desired_fic(moved)).await.unwrap();
    assert_eq!(change, Change::Updated);
    assert_eq!(statuses(&az.arm, "PUT", &fic_id()), [201, 200]);
    assert_eq!(
        az.arm.resource(&fic_id()).unwrap()["properties"]["issuer"],
        json!(moved)
    );

    let metrics = az.metrics.render();
    for line in [
        r#"pgmcp_operator_arm_requests_total{operation="fic_put",class="2xx"} 2"#,
        r#"pgmcp_operator_arm_requests_total{operation="fic_get",class="2xx"} 2"#,
        r#"pgmcp_operator_arm_requests_total{operation="fic_get",class="4xx"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn foundry_connection_is_created_then_left_alone_then_updated() {
    let az = azure(Some(Role::Contributor)).await;
    let target = "https://mcp.contoso.com/agents/sales/mcp";
    let (id, change) = foundry::ensure(&az.client, &desired_connection(target))
        .await
        .unwrap();
    assert_eq!(
        (id.as_str(), change),
        (connection_id().as_str(), Change::Created)
    );
    // ARM adds fields of its own; they do not make the next pass write.
    let stored = az.arm.resource(&connection_id()).unwrap();
    assert_eq!(stored["properties"]["group"], json!("GenericProtocol"));
    assert_eq!(
        stored["properties"]["createdByWorkspaceArmId"],
        json!(project_id())
    );
    assert_eq!(stored["properties"]["audience"], json!(SERVER_APP));
    assert_eq!(stored["properties"]["target"], json!(target));

    let (_, change) = foundry::ensure(&az.client, &desired_connection(target))
        .await
        .unwrap();
    assert_eq!(change, Change::Unchanged);
    assert_eq!(az.arm.count("PUT", &connection_id()), 1);

    let moved = "https://mcp.contoso.com/agents/sales-v2/mcp";
    let (_, change) = foundry::ensure(&az.client, &desired_connection(moved))
        .await
        .unwrap();
    assert_eq!(change, Change::Updated);
    assert_eq!(statuses(&az.arm, "PUT", &connection_id()), [201, 200]);
    assert_eq!(
        az.arm.resource(&connection_id()).unwrap()["properties"]["target"],
        json!(moved)
    );
}

#[tokio::test]
async fn throttling_is_waited_out_as_retry_after_asks() {
    let az = azure(Some(Role::Contributor)).await;
    az.arm.inject(
        Some(Method::PUT),
        Fault::Throttle {
            retry_after_secs: 1,
        },
        2,
    );
    let started = Instant::now();
    let (_, change) = fic::ensure(&az.client, &desired_fic(ISSUER)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(change, Change::Created);
    assert_eq!(statuses(&az.arm, "PUT", &fic_id()), [429, 429, 201]);
    // Two waits of one second each, as asked (not the 50 ms backoff), and not much more.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        az.metrics
            .render()
            .contains(r#"pgmcp_operator_arm_requests_total{operation="fic_put",class="4xx"} 2"#)
    );
}

#[tokio::test]
async fn a_retry_after_beyond_the_budget_is_handed_back_at_once() {
    let az = azure(Some(Role::Contributor)).await;
    az.arm.inject(
        None,
        Fault::Throttle {
            retry_after_secs: 120,
        },
        1,
    );
    let started = Instant::now();
    let err = fic::ensure(&az.client, &desired_fic(ISSUER))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(err.reason(), "ArmThrottled");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert!(!err.needs_user());
    assert!(err.to_string().contains("TooManyRequests"), "{err}");
    // The controller's retry, once ARM is willing again, goes through.
    fic::ensure(&az.client, &desired_fic(ISSUER)).await.unwrap();
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_a_bounded_number_of_times() {
    let az = azure(Some(Role::Contributor)).await;
    az.arm.inject(Some(Method::GET), Fault::ServerError, 2);
    az.arm.inject(
        Some(Method::PUT),
        Fault::Unavailable {
            retry_after_secs: None,
        },
        1,
    );
    let (_, change) = fic::ensure(&az.client, &desired_fic(ISSUER)).await.unwrap();
    assert_eq!(change, Change::Created);
    assert_eq!(statuses(&az.arm, "GET", &fic_id()), [500, 500, 404]);
    assert_eq!(statuses(&az.arm, "PUT", &fic_id()), [503, 201]);

    // A persistent outage: five attempts, then the error, well within the time bound.
    az.arm.clear_requests();
    az.arm.inject(None, Fault::ServerError, 100);
    let started = Instant::now();
    let err = fic::ensure(&az.client, &desired_fic(ISSUER))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < fast().max_elapsed,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(statuses(&az.arm, "GET", &fic_id()), [500; 5]);
    assert_eq!(err.reason(), "ArmUnavailable");
    assert!(!err.needs_user());
    assert!(err.to_string().contains("InternalServerError"), "{err}");
}

#[tokio::test]
async fn slow_answers_within_the_request_timeout_are_fine() {
    let az = azure(Some(Role::Contributor)).await;
    az.arm.set_latency(Duration::from_millis(700));
    let (_, change) = foundry::ensure(
        &az.client,
        &desired_connection("https://mcp.contoso.com/mcp"),
    )
    .await
    .unwrap();
    assert_eq!(change, Change::Created);
}

#[tokio::test]
async fn requests_arm_never_answers_time_out_and_are_retried_until_it_does() {
    let az = azure(Some(Role::Contributor)).await;
    az.arm.set_outage(Some(Fault::Hang));
    let recovery = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        az.arm.set_outage(None);
    };
    let started = Instant::now();
    let desired = desired_fic(ISSUER);
    let (result, ()) = tokio::join!(fic::ensure(&az.client, &desired), recovery);
    assert_eq!(result.unwrap().1, Change::Created);
    // Each unanswered attempt ended at the 2 s request timeout and was retried after a backoff.
    let hung = az.arm.requests().iter().filter(|r| r.status == 0).count();
    assert!((1..=2).contains(&hung), "{hung} unanswered attempts");
    assert!(started.elapsed() >= Duration::from_secs(2));

    // With the attempts spent, the timeout is the caller's error, named as such.
    az.arm.set_outage(Some(Fault::Hang));
    let err = foundry::ensure(
        &az.client,
        &desired_connection("https://mcp.contoso.com/mcp"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "ArmUnavailable", "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test]
async fn long_running_writes_are_followed_to_completion() {
    let az = azure(Some(Role::Contributor)).await;
    az.arm.set_long_running(Some(LongRunning {
        style: LroStyle::AsyncOperation,
        polls: 2,
        retry_after_secs: 1,
        fail: None,
    }));
    let started = Instant::now();
    let (_, change) = fic::ensure(&az.client, &desired_fic(ISSUER)).await.unwrap();
    assert_eq!(change, Change::Created);
    // Two "InProgress" polls and the "Succeeded" one, each after the Retry-After second; the
    // credential exists only once the operation ended, and was read back after it.
    assert_eq!(az.arm.count_matching("GET", "/operationStatuses/"), 3);
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(statuses(&az.arm, "PUT", &fic_id()), [201]);
    assert_eq!(statuses(&az.arm, "GET", &fic_id()), [404, 200]);
    assert!(az.arm.resource(&fic_id()).is_some());

    // 202 + Location for a connection and for deletes.
    az.arm.set_long_running(Some(LongRunning {
        style: LroStyle::Location,
        polls: 1,
        retry_after_secs: 0,
        fail: None,
    }));
    let (_, change) = foundry::ensure(
        &az.client,
        &desired_connection("https://mcp.contoso.com/mcp"),
    )
    .await
    .unwrap();
    assert_eq!(change, Change::Created);
    assert_eq!(az.arm.count_matching("GET", "/operationResults/"), 2);
    assert!(az.arm.resource(&connection_id()).is_some());
    foundry::delete(&az.client, &project_id(), "sales-postgres")
        .await
        .unwrap();
    assert!(az.arm.resource(&connection_id()).is_none());
    assert_eq!(az.arm.count_matching("GET", "/operationResults/"), 4);
}

#[tokio::test]
async fn a_failed_long_running_operation_reports_its_error() {
    let az = azure(Some(Role::Contributor)).await;
    az.arm.set_long_running(Some(LongRunning {
        style: LroStyle::AsyncOperation,
        polls: 0,
        retry_after_secs: 0,
        fail: Some((
            "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity".into(),
            "Too many Federated Identity Credentials are written concurrently for the managed identity.".into(),
        )),
    }));
    let err = fic::ensure(&az.client, &desired_fic(ISSUER))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ArmOperationFailed");
    assert!(!err.needs_user());
    let text = err.to_string();
    assert!(
        text.contains("Failed")
            && text
                .contains("ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity")
            && text.contains(&fic_id()),
        "{text}"
    );
    assert!(az.arm.resource(&fic_id()).is_none());
}

#[tokio::test]
async fn a_missing_role_assignment_is_arms_403_for_the_user_to_fix() {
    // Reader: the GET goes through, the PUT is refused.
    let az = azure(Some(Role::Reader)).await;
    let err = fic::ensure(&az.client, &desired_fic(ISSUER))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ArmAuthorizationFailed");
    assert!(err.needs_user());
    assert_eq!(err.code(), Some("AuthorizationFailed"));
    let text = err.to_string();
    for part in [
        "HTTP 403",
        "AuthorizationFailed",
        "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials/write",
        OPERATOR_OBJECT_ID,
        &fic_id(),
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    assert_eq!(statuses(&az.arm, "PUT", &fic_id()), [403]);

    // No role at all: even reading is refused.
    let az = azure(None).await;
    let err = foundry::ensure(
        &az.client,
        &desired_connection("https://mcp.contoso.com/mcp"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "ArmAuthorizationFailed");
    assert!(
        err.to_string()
            .contains("Microsoft.CognitiveServices/accounts/projects/connections/read"),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_requests_are_arms_400_with_its_code_and_message() {
    let az = azure(Some(Role::Contributor)).await;
    let cases: Vec<(fic::Desired, &str)> = vec![
        (desired_fic(""), "'issuer'"),
        (desired_fic("http://plain.example/"), "https://"),
        (
            fic::Desired {
                name: "-starts-with-a-dash".into(),
                ..desired_fic(ISSUER)
            },
            "-starts-with-a-dash",
        ),
    ];
    for (desired, says) in cases {
        let err = fic::ensure(&az.client, &desired).await.unwrap_err();
        assert_eq!(err.reason(), "ArmBadRequest");
        assert!(err.needs_user());
        assert_eq!(err.status(), Some(400));
        assert_eq!(err.code(), Some("BadRequest"));
        assert!(err.to_string().contains(says), "{says} in {err}");
    }

    // Bodies the library never sends, to show the fake validates like ARM.
    let put = |body: Value| {
        let client = az.client.clone();
        async move {
            client
                .put(
                    &foundry::KIND,
                    &connection_id(),
                    &client.settings().foundry_api_version,
                    &body,
                )
                .await
                .unwrap_err()
        }
    };
    let mut no_category = foundry::body(&desired_connection("https://mcp.contoso.com/mcp"));
    no_category["properties"]
        .as_object_mut()
        .unwrap()
        .remove("category");
    let err = put(no_category).await;
    assert_eq!(
        (err.reason(), err.code()),
        ("ArmBadRequest", Some("ValidationError"))
    );
    assert!(err.to_string().contains("'category'"), "{err}");
    let mut no_audience = foundry::body(&desired_connection("https://mcp.contoso.com/mcp"));
    no_audience["properties"]
        .as_object_mut()
        .unwrap()
        .remove("audience");
    assert!(put(no_audience).await.to_string().contains("'audience'"));
    let err = az
        .client
        .put(
            &fic::KIND,
            &fic_id(),
            "2023-01-31",
            &json!({"properties": {"issuer": ISSUER, "subject": "s", "audiences": ["api://other"]}}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exactly one audience"), "{err}");
    let err = az
        .client
        .get(&fic::KIND, &fic_id(), "1999-01-01")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NoRegisteredProviderFound"));
    assert!(az.arm.resource(&fic_id()).is_none());
}

#[tokio::test]
async fn a_missing_parent_is_arms_404_for_the_user_to_fix() {
    let az = azure(Some(Role::Contributor)).await;
    let elsewhere = format!(
        "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/nobody",
        resource_group()
    );
    let err = fic::ensure(
        &az.client,
        &fic::Desired {
            identity_resource_id: elsewhere,
            ..desired_fic(ISSUER)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        (err.reason(), err.code(), err.needs_user()),
        ("ArmNotFound", Some("ParentResourceNotFound"), true)
    );
    assert!(err.to_string().contains("nobody"), "{err}");

    let err = foundry::ensure(
        &az.client,
        &foundry::Desired {
            project_resource_id: project_id().replace("/projects/sales", "/projects/gone"),
            ..desired_connection("https://mcp.contoso.com/mcp")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("ParentResourceNotFound"));
    assert!(err.needs_user());

    // A resource group the role covers but that does not exist.
    az.arm.assign_role(
        OPERATOR_OBJECT_ID,
        &format!("/subscriptions/{SUBSCRIPTION}"),
        Role::Contributor,
    );
    let err = fic::ensure(
        &az.client,
        &fic::Desired {
            identity_resource_id: identity_id().replace("agents-rg", "deleted-rg"),
            ..desired_fic(ISSUER)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("ResourceGroupNotFound"));
}

#[tokio::test]
async fn deleting_twice_is_fine() {
    let az = azure(Some(Role::Contributor)).await;
    fic::ensure(&az.client, &desired_fic(ISSUER)).await.unwrap();
    foundry::ensure(
        &az.client,
        &desired_connection("https://mcp.contoso.com/mcp"),
    )
    .await
    .unwrap();
    let name = fic::name_for("agents", "sales");
    for _ in 0..2 {
        fic::delete(&az.client, &identity_id(), &name)
            .await
            .unwrap();
        foundry::delete(&az.client, &project_id(), "sales-postgres")
            .await
            .unwrap();
    }
    // The second DELETE finds nothing: 204 No Content, as both resource providers declare
    // (azure-rest-api-specs: FederatedIdentityCredentials_Delete and ProjectConnections_Delete
    // answer 200 or 204), which the client takes as "already gone".
    assert_eq!(statuses(&az.arm, "DELETE", &fic_id()), [200, 204]);
    assert_eq!(statuses(&az.arm, "DELETE", &connection_id()), [200, 204]);
    assert!(az.arm.resource(&fic_id()).is_none());
    assert!(az.arm.resource(&connection_id()).is_none());
}

#[tokio::test]
async fn deleting_what_never_existed_is_fine_and_writes_nothing() {
    let az = azure(Some(Role::Contributor)).await;
    fic::delete(&az.client, &identity_id(), "never-written")
        .await
        .unwrap();
    foundry::delete(&az.client, &project_id(), "never-written")
        .await
        .unwrap();
    let deletes: Vec<u16> = az
        .arm
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.status)
        .collect();
    assert_eq!(deletes, [204, 204]);
    assert!(az.arm.resources_under(&identity_id()).is_empty());
    assert!(az.arm.resources_under(&project_id()).is_empty());

    // A missing parent is still ARM's 404 (which a delete also takes as "gone").
    let nobody = identity_id().replace("sales-mcp", "nobody");
    fic::delete(&az.client, &nobody, "never-written")
        .await
        .unwrap();
    assert_eq!(
        statuses(
            &az.arm,
            "DELETE",
            &fic::resource_id(&nobody, "never-written")
        ),
        [404]
    );
}

#[tokio::test]
async fn arms_concurrent_credential_writes_conflict_is_retried_until_the_write_goes_through() {
    let az = azure(Some(Role::Contributor)).await;
    az.arm.conflict_concurrent_fic_writes(2);
    let (_, change) = fic::ensure(&az.client, &desired_fic(ISSUER)).await.unwrap();
    assert_eq!(change, Change::Created);
    assert_eq!(statuses(&az.arm, "PUT", &fic_id()), [409, 409, 201]);
    assert!(az.arm.resource(&fic_id()).is_some());

    az.arm.conflict_concurrent_fic_writes(1);
    fic::delete(
        &az.client,
        &identity_id(),
        &fic::name_for("agents", "sales"),
    )
    .await
    .unwrap();
    assert_eq!(statuses(&az.arm, "DELETE", &fic_id()), [409, 200]);
    assert!(az.arm.resource(&fic_id()).is_none());

    // More conflicts than attempts: the error says what ARM said, and is transient (the
    // controller backs off and tries again) rather than the user's to fix.
    az.arm.conflict_concurrent_fic_writes(100);
    let err = fic::ensure(&az.client, &desired_fic(ISSUER))
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (
            Some(409),
            Some("ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity")
        )
    );
    assert!(err.is_transient() && !err.needs_user(), "{err}");
    let lower_id = identity_id().to_ascii_lowercase();
    assert!(
        err.to_string().contains(&format!(
            "Too many Federated Identity Credentials are written concurrently for the managed identity '{lower_id}'"
        )),
        "{err}"
    );
    assert!(az.arm.resource(&fic_id()).is_none());
}

#[tokio::test]
async fn a_credential_write_overlapping_another_of_the_same_identity_waits_its_turn() {
    let az = azure(Some(Role::Contributor)).await;
    // Patient enough to outlast the other write.
    let patient = RetryPolicy {
        max_attempts: 10,
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(500),
        max_elapsed: Duration::from_secs(20),
        request_timeout: Duration::from_secs(20),
        ..fast()
    };
    let client = az.client.clone().with_retry_policy(patient);
    // Another client's write to another credential of the identity, stuck in ARM.
    let other = fic::Desired {
        name: "other-writer".into(),
        subject: "system:serviceaccount:agents:other".into(),
        ..desired_fic(ISSUER)
    };
    az.arm
        .hold_put("/federatedidentitycredentials/other-writer");
    let held = tokio::spawn({
        let client = client.clone();
        async move { fic::ensure(&client, &other).await }
    });
    pgmcp_tests::eventually(
        "the other write under way",
        Duration::from_secs(10),
        || async { az.arm.count_matching("PUT", "/other-writer") == 1 },
    )
    .await;

    let ours = tokio::spawn({
        let client = client.clone();
        async move { fic::ensure(&client, &desired_fic(ISSUER)).await }
    });
    pgmcp_tests::eventually("our write refused", Duration::from_secs(10), || async {
        statuses(&az.arm, "PUT", &fic_id()).contains(&409)
    })
    .await;
    az.arm.release();
    assert_eq!(held.await.unwrap().unwrap().1, Change::Created);
    assert_eq!(ours.await.unwrap().unwrap().1, Change::Created);
    let puts = statuses(&az.arm, "PUT", &fic_id());
    assert_eq!(puts.first(), Some(&409), "{puts:?}");
    assert_eq!(puts.last(), Some(&201), "{puts:?}");
    assert_eq!(az.arm.resources_under(&identity_id()).len(), 2);

    // A long-running write keeps the identity busy until its operation ends, too.
    az.arm.clear_requests();
    az.arm.set_long_running(Some(LongRunning {
        style: LroStyle::AsyncOperation,
        polls: 1,
        retry_after_secs: 1,
        fail: None,
    }));
    let identity = identity_id();
    let (deleted, updated) = tokio::join!(fic::delete(&client, &identity, "other-writer"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        fic::ensure(&client, &desired_fic("https://oidc.example/moved/")).await
    });
    deleted.unwrap();
    assert_eq!(updated.unwrap().1, Change::Updated);
    let puts = statuses(&az.arm, "PUT", &fic_id());
    assert_eq!(puts.first(), Some(&409), "{puts:?}");
    assert_eq!(puts.last(), Some(&201), "{puts:?}");
    assert_eq!(
        az.arm.resources_under(&identity_id()),
        [fic_id().to_ascii_lowercase()]
    );
}

#[tokio::test]
async fn the_newest_api_versions_are_served_and_unknown_ones_refused() {
    let az = azure(Some(Role::Contributor)).await;
    // Every api-version either resource provider serves reads the resources.
    for version in FIC_API_VERSIONS {
        assert_eq!(
            az.client.get(&fic::KIND, &fic_id(), version).await.unwrap(),
            None
        );
    }
    for version in CONNECTION_API_VERSIONS {
        assert_eq!(
            az.client
                .get(&foundry::KIND, &connection_id(), version)
                .await
                .unwrap(),
            None
        );
    }
    // An operator configured with the newest stable versions writes and deletes with them.
    let settings = AzureSettings {
        arm_endpoint: az.arm.url().to_owned(),
        fic_api_version: "2026-05-31".into(),
        foundry_api_version: "2026-09-01".into(),
    };
    let source =
        ClientSecretSource::new(&az.entra, TENANT, OPERATOR_CLIENT_ID, OPERATOR_SECRET).unwrap();
    let newest = ArmClient::new(
        settings,
        TokenProvider::new(Arc::new(source), az.arm.scope()),
        az.metrics.clone(),
    )
    .unwrap()
    .with_root_certificates(&std::fs::read(az.arm.ca_cert()).unwrap())
    .unwrap()
    .with_retry_policy(fast());
    fic::ensure(&newest, &desired_fic(ISSUER)).await.unwrap();
    foundry::ensure(&newest, &desired_connection("https://mcp.contoso.com/mcp"))
        .await
        .unwrap();
    fic::delete(&newest, &identity_id(), &fic::name_for("agents", "sales"))
        .await
        .unwrap();
    foundry::delete(&newest, &project_id(), "sales-postgres")
        .await
        .unwrap();
    assert!(az.arm.resources_under(&identity_id()).is_empty());
    assert!(az.arm.resources_under(&project_id()).is_empty());

    // A version the provider has, but without federated credentials, and one that never was.
    for version in ["2021-09-30-preview", "2026-99-99"] {
        let err = az
            .client
            .get(&fic::KIND, &fic_id(), version)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("NoRegisteredProviderFound"), "{err}");
    }
}

#[tokio::test]
async fn connection_categories_and_auth_types_arm_does_not_list_are_stored_as_sent() {
    // `category` and `authType` are extensible enums (azure-rest-api-specs models.tsp:
    // `union ConnectionCategory { string, … }`, `union ConnectionAuthType { string, … }`): ARM
    // takes values newer than any list a client or fake knows.
    let az = azure(Some(Role::Contributor)).await;
    let mut body = foundry::body(&desired_connection("https://mcp.contoso.com/mcp"));
    // Values ARM does not list are kept as sent; known ones in another spelling come back in
    // ARM's.
    for (category, auth_type, stored_as, group) in [
        (
            "TelepathicTool",
            "QuantumEntanglement",
            ("TelepathicTool", "QuantumEntanglement"),
            "ServicesAndApps",
        ),
        (
            "remotetool",
            "projectmanagedidentity",
            ("RemoteTool", "ProjectManagedIdentity"),
            "GenericProtocol",
        ),
    ] {
        body["properties"]["category"] = json!(category);
        body["properties"]["authType"] = json!(auth_type);
        let stored = az
            .client
            .put(
                &foundry::KIND,
                &connection_id(),
                &az.client.settings().foundry_api_version,
                &body,
            )
            .await
            .unwrap();
        assert_eq!(stored["properties"]["category"], json!(stored_as.0));
        assert_eq!(stored["properties"]["authType"], json!(stored_as.1));
        assert_eq!(stored["properties"]["group"], json!(group));
    }
}

/// Hands out one fixed token.
#[derive(Debug)]
struct Fixed(String);

#[async_trait::async_trait]
impl TokenSource for Fixed {
    async fn fetch(&self, _scope: &str) -> pgmcp_identity::Result<AccessToken> {
        Ok(AccessToken::new(
            self.0.clone(),
            SystemTime::now() + Duration::from_secs(3600),
        ))
    }
    fn identity(&self) -> String {
        "fixed test token".into()
    }
}

#[tokio::test]
async fn tokens_arm_would_refuse_are_refused_with_arms_401() {
    let az = azure(Some(Role::Contributor)).await;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |aud: &str| {
        json!({
            "aud": aud, "iss": EntraFake::issuer_v1(TENANT), "tid": TENANT,
            "oid": OPERATOR_OBJECT_ID, "appid": OPERATOR_CLIENT_ID,
            "iat": now, "nbf": now, "exp": now + 3600,
        })
    };
    let rogue_kid = az.entra.new_unpublished_key(TENANT).unwrap();
    let cases = [
        // A PostgreSQL token is not an ARM token.
        (
            az.entra
                .sign(TENANT, &claims("https://ossrdbms-aad.database.windows.net"))
                .unwrap(),
            "InvalidAuthenticationTokenAudience",
        ),
        // Signed by a key Entra does not publish.
        (
            az.entra
                .sign_with(TENANT, &rogue_kid, &claims(az.arm.url()))
                .unwrap(),
            "InvalidAuthenticationToken",
        ),
        // A token for another cloud's Resource Manager (the public one) is not for this one.
        (
            az.entra
                .sign(TENANT, &claims("https://management.azure.com"))
                .unwrap(),
            "InvalidAuthenticationTokenAudience",
        ),
        ("not-a-jwt".to_owned(), "InvalidAuthenticationToken"),
    ];
    for (token, code) in cases {
        let client = client_for(
            &az.arm,
            TokenProvider::new(Arc::new(Fixed(token)), az.arm.scope()),
            az.metrics.clone(),
        );
        let err = fic::ensure(&client, &desired_fic(ISSUER))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "ArmAuthenticationFailed", "{err}");
        assert_eq!(err.code(), Some(code), "{err}");
        assert!(err.needs_user());
        assert!(!err.to_string().contains("eyJ"), "no token in {err}");
    }
    // The real one is fine.
    fic::ensure(&az.client, &desired_fic(ISSUER)).await.unwrap();
}

#[tokio::test]
async fn an_untrusted_arm_certificate_is_a_transport_error() {
    let az = azure(Some(Role::Contributor)).await;
    let source =
        ClientSecretSource::new(&az.entra, TENANT, OPERATOR_CLIENT_ID, OPERATOR_SECRET).unwrap();
    let settings = AzureSettings {
        arm_endpoint: az.arm.url().to_owned(),
        ..AzureSettings::default()
    };
    let untrusting = ArmClient::new(
        settings,
        TokenProvider::new(Arc::new(source), az.arm.scope()),
        az.metrics.clone(),
    )
    .unwrap()
    .with_retry_policy(RetryPolicy {
        max_attempts: 1,
        ..fast()
    });
    let err = fic::ensure(&untrusting, &desired_fic(ISSUER))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err}");
    assert_eq!(err.reason(), "ArmUnavailable");
    assert!(az.arm.requests().is_empty());
}

/// Exchanges a ServiceAccount token at the Entra fake as the binding's managed identity, as the
/// server's workload identity does: `Ok(())` or Entra's error description.
async fn exchange(entra: &EntraFake, assertion: &str) -> Result<(), String> {
    match exchange_answer(entra, assertion).await {
        (200, _) => Ok(()),
        (_, body) => Err(body["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_owned()),
    }
}

/// The status and JSON body Entra answers to the exchange of `assertion`.
async fn exchange_answer(entra: &EntraFake, assertion: &str) -> (u16, Value) {
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(entra.ca_cert()).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let response = http
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", entra.url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", MI_CLIENT_ID),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("scope", pgmcp_identity::POSTGRES_SCOPE),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// An unsigned assertion with these claims: Entra matches a federated credential before it
/// fetches the issuer's keys, so what does not match is named all the same.
fn unsigned_assertion(iss: &str, sub: &str, aud: &str) -> String {
    let part =
        |value: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string());
    format!(
        "{}.{}.c2lnbmF0dXJl",
        part(json!({"alg": "RS256", "typ": "JWT"})),
        part(json!({"iss": iss, "sub": sub, "aud": aud})),
    )
}

#[tokio::test]
async fn a_new_credential_is_refused_until_it_has_propagated_and_refusals_name_what_did_not_match()
{
    let env = TestEnv::shared();
    let ns = env.namespace("arm-fic-propagation").await.unwrap();
    let az = azure(Some(Role::Contributor)).await;
    az.entra
        .trust_issuer(env.server(), env.client().await.unwrap());
    let propagation = Duration::from_secs(3);
    az.entra.set_propagation_delay(propagation);
    let token = service_account_token(&ns, "sales-mcp").await.unwrap();
    let subject = fic::subject(&ns.name, "sales-mcp");
    let desired = fic::Desired {
        identity_resource_id: identity_id(),
        name: fic::name_for(&ns.name, "sales"),
        issuer: env.server().to_owned(),
        subject: subject.clone(),
    };
    fic::ensure(&az.client, &desired).await.unwrap();
    let created = Instant::now();

    // Refused as Entra refuses a credential that has not reached every replica yet.
    let (status, body) = exchange_answer(&az.entra, &token).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client", "{body}");
    assert_eq!(body["error_codes"], json!([700213]), "{body}");
    assert_eq!(
        body["error_uri"], "https://login.microsoftonline.com/error?code=700213",
        "{body}"
    );
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(&format!(
            "AADSTS700213: No matching federated identity record found for presented assertion subject '{subject}'. Check your federated identity credential Subject, Audience and Issuer against the presented assertion."
        )),
        "{description}"
    );
    for field in ["timestamp", "trace_id", "correlation_id"] {
        let value = body[field].as_str().unwrap();
        assert!(
            description.contains(value),
            "{field} {value} in {description}"
        );
    }
    // Accepted once propagated, with no change made.
    pgmcp_tests::eventually(
        "the credential to propagate",
        Duration::from_secs(15),
        || async { exchange(&az.entra, &token).await.is_ok() },
    )
    .await;
    assert!(created.elapsed() >= propagation);

    // A subject that matches a credential only ignoring case (Entra compares case-sensitively).
    let shouting = fic::Desired {
        identity_resource_id: identity_id(),
        name: fic::name_for(&ns.name, "other"),
        issuer: env.server().to_owned(),
        subject: fic::subject(&ns.name.to_uppercase(), "other"),
    };
    fic::ensure(&az.client, &shouting).await.unwrap();
    let other = service_account_token(&ns, "other").await.unwrap();
    let refused = exchange(&az.entra, &other).await.unwrap_err();
    assert!(
        refused.starts_with("AADSTS7002138: No matching federated identity record found for presented assertion subject")
            && refused.contains("The subject matches with case-insensitive comparison, but not with case-sensitive comparison."),
        "{refused}"
    );
    // An issuer no credential names, and an audience none accepts.
    let refused = exchange(
        &az.entra,
        &unsigned_assertion(
            "https://elsewhere.example/",
            &subject,
            "api://AzureADTokenExchange",
        ),
    )
    .await
    .unwrap_err();
    assert!(
        refused.starts_with("AADSTS700211: No matching federated identity record found for presented assertion issuer 'https://elsewhere.example/'."),
        "{refused}"
    );
    let refused = exchange(
        &az.entra,
        &unsigned_assertion(env.server(), &subject, "api://other"),
    )
    .await
    .unwrap_err();
    assert!(
        refused.starts_with("AADSTS700212: No matching federated identity record found for presented assertion audience 'api://other'."),
        "{refused}"
    );
}

#[tokio::test]
async fn the_credential_written_through_arm_lets_the_service_account_sign_in() {
    let env = TestEnv::shared();
    let ns = env.namespace("arm-fic").await.unwrap();
    let az = azure(Some(Role::Contributor)).await;
    az.entra
        .trust_issuer(env.server(), env.client().await.unwrap());
    let token = service_account_token(&ns, "sales-mcp").await.unwrap();

    // No credential of the identity names the apiserver as issuer yet.
    let refused = exchange(&az.entra, &token).await.unwrap_err();
    assert!(refused.starts_with("AADSTS700211:"), "{refused}");

    let desired = fic::Desired {
        identity_resource_id: identity_id(),
        name: fic::name_for(&ns.name, "sales"),
        issuer: env.server().to_owned(),
        subject: fic::subject(&ns.name, "sales-mcp"),
    };
    let (_, change) = fic::ensure(&az.client, &desired).await.unwrap();
    assert_eq!(change, Change::Created);
    exchange(&az.entra, &token).await.unwrap();

    // Another ServiceAccount of the namespace is not covered.
    let other = service_account_token(&ns, "someone-else").await.unwrap();
    let refused = exchange(&az.entra, &other).await.unwrap_err();
    assert!(refused.starts_with("AADSTS700213:"), "{refused}");

    fic::delete(&az.client, &identity_id(), &desired.name)
        .await
        .unwrap();
    let refused = exchange(&az.entra, &token).await.unwrap_err();
    assert!(refused.starts_with("AADSTS700211:"), "{refused}");
}
