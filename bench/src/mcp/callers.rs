//! Per-caller access under load: the Entra fake this process hosts (HTTPS with a test CA the
//! server trusts through `SSL_CERT_FILE`), the bearer tokens the sessions send, and the server
//! arguments of the two authenticated pgmcp targets.
//!
//! - `pgmcp-http-entra`: Entra caller authentication, no caller classes — the server logs in as
//!   the seeded reader and runs every statement as it, like `pgmcp-http` (the twin).
//! - `pgmcp-http-class`: the same authentication and one caller class that every bench caller
//!   matches. The server logs in as [`seed::LOGIN`] (NOINHERIT, CONNECT only, as the operator
//!   makes it), and each statement runs as the class's role ([`seed::CLASS_ROLE`], holding the
//!   reader's grants) with the caller's claims in `pgmcp.caller`.
//!
//! The difference between the two is what a caller class costs.

use std::path::Path;

use pgmcp_tests::entra::EntraFake;
use serde_json::json;

use super::seed::{self, Seeded};

/// The tenant the fake serves and the server trusts.
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The server's app registration: the tokens' audience.
pub const AUDIENCE: &str = "44444444-4444-4444-8444-444444444444";
/// The app role the server requires and the class matches.
pub const ROLE: &str = "MCP.Read";
/// The calling application (the bench's sessions) and its service principal.
const CALLER_APP: &str = "55555555-5555-4555-8555-555555555555";
const CALLER_OID: &str = "66666666-6666-4666-8666-666666666666";
/// The one caller class of `pgmcp-http-class`.
pub const CLASS: &str = "bench";

/// The Entra fake and what the authenticated targets are started with.
#[derive(Debug)]
pub struct Entra {
    fake: EntraFake,
}

impl Entra {
    /// Starts the fake on a loopback port with the bench's tenant.
    pub async fn start() -> anyhow::Result<Self> {
        let fake = EntraFake::start().await?;
        fake.add_tenant(TENANT)?;
        Ok(Self { fake })
    }

    /// A fresh app-only v2 token for the server, with [`ROLE`], valid for an hour. Each session
    /// gets its own when it opens; sessions live for one client count of one target (a few
    /// minutes at most), so none outlives its token however long the whole run is.
    pub fn token(&self) -> anyhow::Result<String> {
        let claims =
            self.fake
                .app_token_claims(TENANT, 2, AUDIENCE, &[ROLE], CALLER_OID, CALLER_APP);
        self.fake.sign(TENANT, &claims)
    }

    /// The `--entra-*` arguments, and the environment that makes the server trust the fake.
    pub fn server_args(&self) -> (Vec<String>, Vec<(String, String)>) {
        let args = [
            "--entra-tenant-id",
            TENANT,
            "--entra-audience",
            AUDIENCE,
            "--entra-required-role",
            ROLE,
            "--entra-authority-host",
            self.fake.url(),
        ]
        .map(str::to_owned)
        .to_vec();
        let env = vec![(
            "SSL_CERT_FILE".to_owned(),
            self.fake.ca_cert().display().to_string(),
        )];
        (args, env)
    }
}

/// Writes the server configuration of `pgmcp-http-class` into `dir` and returns its path: one
/// caller class that every bench caller matches (by [`ROLE`]), reading schema public as its
/// role, and no default grants — as the operator writes it for a binding with one class.
pub fn class_config(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let config = json!({
        "scope": {
            "grants": [],
            "callers": [{
                "name": CLASS,
                "role": seed::CLASS_ROLE,
                "match": {"appRoles": [ROLE]},
                "grants": [{"schema": "public", "tables": ["*"]}],
            }]
        }
    });
    let path = dir.join("class-config.json");
    std::fs::write(&path, config.to_string())?;
    Ok(path)
}

/// `postgres://<login>@host:port/bench?sslmode=disable` for the class target's login role.
pub fn login_url(seeded: &Seeded) -> String {
    format!(
        "postgres://{}@{}:{}/{}?sslmode=disable",
        seed::LOGIN,
        seeded.host,
        seeded.port,
        seed::DATABASE
    )
}
