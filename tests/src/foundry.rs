//! A binding in Entra mode with a federated credential and a Foundry connection, and everything
//! around it: the Entra and ARM fakes, the managed identity and project in ARM, the principal's
//! admin (with the `pgaadauth` fixture) in the target database, and the operator running with
//! its own workload identity. Shared by the Azure flow test and the fault tests.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::arm::{ArmFake, Role};
use crate::entra::{App, EntraFake};
use crate::graph::{APP_ROLE_ASSIGNMENT_READ_WRITE_ALL, APPLICATION_READ_ALL, AppRole, GraphFake};
use crate::operator::{Operator, WorkloadIdentity};
use crate::postgres::{PGAADAUTH_FIXTURE, entra_admin_sql};
use crate::{TestEnv, TestNamespace};

pub const TENANT: &str = "22222222-2222-4222-8222-222222222222";
pub const SUBSCRIPTION: &str = "/subscriptions/55555555-5555-4555-8555-555555555555";
pub const OPERATOR_CLIENT_ID: &str = "66666666-6666-4666-8666-666666666666";
pub const OPERATOR_OBJECT_ID: &str = "77777777-7777-4777-8777-777777777777";
/// The binding's user-assigned managed identity.
pub const MI_CLIENT_ID: &str = "11111111-1111-4111-8111-111111111111";
pub const MI_OBJECT_ID: &str = "33333333-3333-4333-8333-333333333333";
/// The MCP server's app registration, the audience of callers' tokens and of Foundry's.
pub const SERVER_APP_ID: &str = "44444444-4444-4444-8444-444444444444";
/// `spec.server.publicUrl` of [`Foundry::binding`].
pub const PUBLIC_URL: &str = "https://mcp.contoso.test/agents/sales/mcp";
/// The service principal of [`SERVER_APP_ID`] in the Graph fake, and its `MCP.Read` app role.
pub const SERVER_SP_ID: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
pub const MCP_READ_ID: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";

/// Where the binding's database is.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub database: String,
}

/// The fakes and identities of one Foundry binding. The operator is started separately
/// ([`Foundry::start_operator`]) so a test can kill and start it again.
#[derive(Debug)]
pub struct Foundry {
    pub entra: Arc<EntraFake>,
    pub arm: ArmFake,
    pub target: Target,
    /// The Entra admin the operator signs in as (its tokens are this role's password).
    pub entra_admin: String,
    /// The role `pgaadauth_create_principal_with_oid` makes for the managed identity.
    pub principal: String,
    pub identity_id: String,
    pub project_id: String,
    /// A superuser connection to the target database.
    pub admin: Arc<tokio_postgres::Client>,
    /// Microsoft Graph, once [`Foundry::start_graph`] ran (`foundry.assignAppRole`).
    pub graph: Option<GraphFake>,
}

impl Foundry {
    /// Prepares `target` (pgaadauth fixture, the Entra admin, a `public.sales` table it owns)
    /// through `admin`, a superuser connection to it, and starts the fakes: the operator's
    /// identity is a Contributor on the subscription, the managed identity and the project
    /// exist in ARM.
    pub async fn start(target: Target, admin: tokio_postgres::Client) -> anyhow::Result<Self> {
        let entra_admin = format!("{}_aad_admin", target.database);
        let principal = format!("{}_mi", target.database);
        let admin = Arc::new(admin);
        admin.batch_execute(PGAADAUTH_FIXTURE).await?;
        admin.batch_execute(&entra_admin_sql(&entra_admin)).await?;

        let entra = Arc::new(EntraFake::start().await?);
        entra.add_tenant(TENANT)?;
        entra.accept_postgres_tokens_as_password(
            admin.clone(),
            &[
                (OPERATOR_CLIENT_ID, &entra_admin),
                (MI_CLIENT_ID, &principal),
            ],
        );
        let arm = ArmFake::start(entra.clone(), TENANT).await?;
        let identity_id = format!(
            "{SUBSCRIPTION}/resourceGroups/rg-agents/providers/Microsoft.ManagedIdentity/userAssignedIdentities/sales-mcp"
        );
        let project_id = format!(
            "{SUBSCRIPTION}/resourceGroups/rg-agents/providers/Microsoft.CognitiveServices/accounts/contoso-ai/projects/sales-agents"
        );
        arm.add_identity(&identity_id, MI_CLIENT_ID, MI_OBJECT_ID)?;
        arm.add_project(&project_id)?;
        arm.assign_role(OPERATOR_OBJECT_ID, SUBSCRIPTION, Role::Contributor);
        Ok(Self {
            entra,
            arm,
            target,
            entra_admin,
            principal,
            identity_id,
            project_id,
            admin,
            graph: None,
        })
    }

    /// [`Foundry::start`] on database `db`, which the operator and the servers reach at `host`
    /// (its server's own address, or the one pods use).
    pub async fn start_in(db: &crate::postgres::TestDatabase, host: &str) -> anyhow::Result<Self> {
        let target = Target {
            host: host.to_owned(),
            port: db.server().port(),
            database: db.name.clone(),
        };
        Self::start(target, db.connect().await?).await
    }

    /// Starts a Graph fake for `foundry.assignAppRole`: the server app's service principal with
    /// app role `MCP.Read`, the service principal of the project's managed identity, and Graph
    /// permissions for the operator to read and assign app roles.
    pub async fn start_graph(&mut self) -> anyhow::Result<()> {
        let graph = GraphFake::start(self.entra.clone(), TENANT).await?;
        self.register_server_app()?;
        graph.add_service_principal(
            SERVER_APP_ID,
            SERVER_SP_ID,
            &[AppRole {
                id: MCP_READ_ID.to_owned(),
                value: "MCP.Read".to_owned(),
            }],
        );
        graph.grant(OPERATOR_OBJECT_ID, APPLICATION_READ_ALL);
        graph.grant(OPERATOR_OBJECT_ID, APP_ROLE_ASSIGNMENT_READ_WRITE_ALL);
        self.graph = Some(graph);
        self.add_graph_project(&self.project_id.clone())
    }

    /// Registers the managed identity of project `project_id` (in the ARM fake) as a service
    /// principal in Graph and an app in Entra, so app roles can be assigned to it.
    pub fn add_graph_project(&self, project_id: &str) -> anyhow::Result<()> {
        let graph = self
            .graph
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("start_graph first"))?;
        let principal = self
            .arm
            .project_principal_id(project_id)
            .ok_or_else(|| anyhow::anyhow!("no project {project_id} in the ARM fake"))?;
        // The identity's client id: its object id with the version nibble of another GUID.
        let client_id = format!("{}c{}", &principal[..14], &principal[15..]);
        self.entra.register_app(
            TENANT,
            App {
                client_id: client_id.clone(),
                object_id: principal.clone(),
                display_name: project_id.rsplit('/').next().unwrap_or_default().to_owned(),
                access_token_version: 1,
                ..App::default()
            },
        )?;
        graph.add_service_principal(&client_id, &principal, &[]);
        Ok(())
    }

    /// The Graph fake's assignments held by the managed identity of project `project_id`.
    pub fn project_assignments(&self, project_id: &str) -> Vec<crate::graph::Assignment> {
        let principal = self
            .arm
            .project_principal_id(project_id)
            .unwrap_or_default();
        self.graph
            .as_ref()
            .map(|g| g.assignments())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.principal_id == principal)
            .collect()
    }

    /// Starts the operator on `ns` with its workload identity (federated in the Entra fake),
    /// trusting both fakes and calling the ARM fake. `extra` flags come last.
    pub async fn start_operator(
        &self,
        env: &TestEnv,
        ns: &TestNamespace,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Operator> {
        let arm_flag = format!("--arm-endpoint={}", self.arm.url());
        let graph_flag = self
            .graph
            .as_ref()
            .map(|g| format!("--graph-endpoint={}", g.url()));
        let mut flags = vec![arm_flag.as_str()];
        flags.extend(graph_flag.as_deref());
        flags.extend_from_slice(extra);
        let trust = self.fake_cas();
        let identity = self.operator_identity(&trust);
        Operator::start_with_workload_identity(env, ns, name, &identity, &flags).await
    }

    /// The CAs of the fakes the operator calls: Entra, ARM, and Graph once started.
    pub fn fake_cas(&self) -> Vec<&std::path::Path> {
        let mut trust = vec![self.entra.ca_cert(), self.arm.ca_cert()];
        trust.extend(self.graph.as_ref().map(|g| g.ca_cert()));
        trust
    }

    /// The operator's own managed identity, trusting `trust`.
    pub fn operator_identity<'a>(
        &'a self,
        trust: &'a [&'a std::path::Path],
    ) -> WorkloadIdentity<'a> {
        WorkloadIdentity {
            entra: &self.entra,
            tenant: TENANT,
            client_id: OPERATOR_CLIENT_ID,
            object_id: OPERATOR_OBJECT_ID,
            trust,
        }
    }

    /// The binding `name`: Entra identity with a federated credential issued for `issuer`,
    /// every table of `public`, Entra auth on the server, and the Foundry connection
    /// `<name>-postgres`.
    pub fn binding(&self, name: &str, issuer: &str) -> Value {
        json!({
            "apiVersion": "pgmcp.dev/v1alpha1",
            "kind": "PostgresMcpBinding",
            "metadata": {"name": name},
            "spec": {
                "postgres": {
                    "host": self.target.host, "port": self.target.port,
                    "database": self.target.database, "sslMode": "require",
                    "admin": {"entra": {"user": self.entra_admin}, "database": self.target.database}
                },
                "identity": {"entra": {
                    "clientId": MI_CLIENT_ID, "tenantId": TENANT, "principalName": self.principal,
                    "objectId": MI_OBJECT_ID,
                    "federatedCredential": {"identityResourceId": self.identity_id, "issuer": issuer}
                }},
                "access": {"grants": [{"schema": "public", "tables": ["*"]}]},
                "server": {
                    "auth": {"entra": {
                        "tenantId": TENANT, "audience": SERVER_APP_ID, "requiredRoles": ["MCP.Read"],
                        "authorityHost": self.entra.url()
                    }},
                    "publicUrl": PUBLIC_URL
                },
                "foundry": {"projectResourceId": self.project_id, "connectionName": format!("{name}-postgres")}
            }
        })
    }

    /// How many roles named [`Foundry::principal`] exist (0 or 1), and the oid of the one that
    /// does, so a test can tell "kept" from "dropped and made again".
    pub async fn principal_oid(&self) -> anyhow::Result<Option<u32>> {
        let row = self
            .admin
            .query_opt(
                "SELECT oid FROM pg_roles WHERE rolname = $1",
                &[&self.principal],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Registers the MCP server's app ([`SERVER_APP_ID`]) in the Entra fake, so tokens can be
    /// issued for it and its app roles assigned.
    fn register_server_app(&self) -> anyhow::Result<()> {
        self.entra.register_app(
            TENANT,
            App {
                client_id: SERVER_APP_ID.to_owned(),
                object_id: SERVER_SP_ID.to_owned(),
                display_name: "pgmcp-sales".to_owned(),
                access_token_version: 1,
                ..App::default()
            },
        )
    }

    /// A token for `scope` from the Entra fake's token endpoint, as an agent with an app
    /// registration of its own and a client secret gets one (`az account get-access-token
    /// --scope` for a service principal): the server's app is registered and the agent holds
    /// its app role `MCP.Read`.
    pub async fn agent_token(&self, scope: &str) -> anyhow::Result<String> {
        const AGENT_APP: &str = "dddddddd-dddd-4ddd-8ddd-dddddddddddd";
        const AGENT_OID: &str = "eeeeeeee-eeee-4eee-8eee-eeeeeeeeeeee";
        const AGENT_SECRET: &str = "agent-secret";
        self.register_server_app()?;
        self.entra.register_app(
            TENANT,
            App {
                client_id: AGENT_APP.to_owned(),
                object_id: AGENT_OID.to_owned(),
                display_name: "sales agent".to_owned(),
                secret: Some(AGENT_SECRET.to_owned()),
                access_token_version: 1,
                ..App::default()
            },
        )?;
        self.entra
            .assign_app_role(TENANT, SERVER_APP_ID, AGENT_APP, "MCP.Read");
        let ca = std::fs::read(self.entra.ca_cert())?;
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca)?])
            .build()?;
        let answer: Value = client
            .post(format!("{}/{TENANT}/oauth2/v2.0/token", self.entra.url()))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", AGENT_APP),
                ("client_secret", AGENT_SECRET),
                ("scope", scope),
            ])
            .send()
            .await?
            .json()
            .await?;
        answer["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no token for {scope}: {answer}"))
    }

    /// How many federated credentials the managed identity has, and how many connections the
    /// project has, in ARM.
    pub fn arm_resources(&self) -> (usize, usize) {
        (
            self.arm.resources_under(&self.identity_id).len(),
            self.arm.resources_under(&self.project_id).len(),
        )
    }
}

/// Runs the Foundry agent sample (`examples/foundry-agent/agent.py`, with the SDK pinned in its
/// requirements.txt, from `make mcp-clients`) with `args`, kubectl reading `kubeconfig`.
pub fn run_foundry_sample(kubeconfig: &std::path::Path, args: &[&str]) -> std::process::Output {
    let python = crate::paths::cache_dir().join("venv/foundry-agent/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `make mcp-clients` (tests/scripts/install-mcp-clients.sh)",
        python.display()
    );
    std::process::Command::new(&python)
        .arg(crate::paths::workspace_root().join("examples/foundry-agent/agent.py"))
        .arg("--kubectl")
        .arg(crate::paths::kubectl())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("the Foundry sample runs")
}
