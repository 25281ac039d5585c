//! Validation of Microsoft Entra ID access tokens, as Entra issues them: RS256 only, issuer v2
//! (`{authority}/{tenant}/v2.0`) or v1 (`https://sts.windows.net/{tenant}/` in the public
//! cloud) as the tenant's OIDC discovery documents name them, audience the app's client id or
//! its `api://` URI, `exp`/`nbf` with a minute of skew, a signature by a key of the tenant's
//! JWKS, an app role from the required ones, and optionally an allowed caller object id.
//!
//! Keys come from OIDC discovery (v2 and v1 documents) and are cached; an unknown `kid` fetches
//! them again, at most once per [`MIN_KEY_REFRESH_INTERVAL`], so forged tokens cannot make the
//! server hammer Entra. Crypto is jsonwebtoken's (aws-lc-rs); nothing here is hand-written.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pgmcp_crds::config::EntraAuthConfig;
use serde::Deserialize;

use super::Caller;

/// Smallest time between two key fetches caused by unknown `kid`s.
pub const MIN_KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Keys older than this are fetched again on the next request.
const MAX_KEY_AGE: Duration = Duration::from_secs(6 * 3600);
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 60;
/// Largest discovery or JWKS document read.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Why a request was not let through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No usable token: 401 with the challenge and no error code (RFC 6750 §3.1).
    #[error("no bearer token in the Authorization header")]
    Missing,
    /// A token that is not valid here: 401 `invalid_token`.
    #[error("{0}")]
    Invalid(String),
    /// A valid token without the rights: 403 `insufficient_scope`.
    #[error("{reason}")]
    Forbidden { reason: String, label: &'static str },
    /// The tenant's keys cannot be fetched: 503.
    #[error("{0}")]
    Unavailable(String),
}

impl Rejection {
    /// Bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Rejection::Missing => "missing_token",
            Rejection::Invalid(_) => "invalid_token",
            Rejection::Forbidden { label, .. } => label,
            Rejection::Unavailable(_) => "keys_unavailable",
        }
    }
}

fn invalid(reason: impl Into<String>) -> Rejection {
    Rejection::Invalid(reason.into())
}

/// Why the validator could not be set up, or the tenant's signing keys not fetched. The causes
/// are part of the message (the log shows only the message).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("failed to set up the HTTP client for Entra discovery: {0}")]
    HttpClient(reqwest::Error),
    /// [`EntraValidator::with_keys`] got no key it can use.
    #[error("the key set has no usable signing key")]
    NoUsableKey,
    #[error("failed to fetch {url}: {}", with_causes(.cause))]
    Fetch { url: String, cause: reqwest::Error },
    #[error("failed to fetch {url}: HTTP {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("failed to read {url}: {cause}")]
    Read { url: String, cause: reqwest::Error },
    #[error("{url} is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("failed to parse {url}: {cause}")]
    Parse {
        url: String,
        cause: serde_json::Error,
    },
    /// None of the key sets the discovery documents name has a key this library can use.
    #[error("{jwks_uris} publishes no usable signing key")]
    NoSigningKey { jwks_uris: String },
}

/// The claims read from a validated token.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    oid: Option<String>,
    /// v1 tokens: the calling application.
    #[serde(default)]
    appid: Option<String>,
    /// v2 tokens: the calling application.
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tid: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    /// Where the groups are when the token cannot list them all (`{"groups": "src1"}`).
    #[serde(default, rename = "_claim_names")]
    claim_names: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    preferred_username: Option<String>,
    /// v1 tokens: the user's name.
    #[serde(default)]
    upn: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// The tenant's issuers and signing keys, as last fetched.
struct KeySet {
    issuers: Vec<String>,
    keys: HashMap<String, DecodingKey>,
    fetched: Instant,
}

/// Validates caller tokens for one tenant and audience.
pub struct EntraValidator {
    config: EntraAuthConfig,
    audiences: Vec<String>,
    http: reqwest::Client,
    keys: tokio::sync::RwLock<Option<KeySet>>,
    /// When keys were last requested (successfully or not); serialises refreshes.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Keys given at construction ([`EntraValidator::with_keys`]): never fetched nor aged out.
    fixed_keys: bool,
}

impl std::fmt::Debug for EntraValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraValidator")
            .field("tenant_id", &self.config.tenant_id)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

/// The audiences a token may carry: the client id and its `api://` URI, whichever was given.
pub fn audiences(audience: &str) -> Vec<String> {
    let audience = audience.trim();
    match audience.strip_prefix("api://") {
        Some(id) => vec![audience.to_owned(), id.to_owned()],
        None => vec![audience.to_owned(), format!("api://{audience}")],
    }
}

impl EntraValidator {
    pub fn new(config: EntraAuthConfig) -> Result<Self, DiscoveryError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(DiscoveryError::HttpClient)?;
        Ok(Self {
            audiences: audiences(&config.audience),
            config,
            http,
            keys: tokio::sync::RwLock::new(None),
            last_fetch: tokio::sync::Mutex::new(None),
            fixed_keys: false,
        })
    }

    /// A validator that never fetches: it accepts the given `issuers` and the keys of `jwks`
    /// (those with a `kid` this library can use), for tests and fuzzing without network.
    pub fn with_keys(
        config: EntraAuthConfig,
        issuers: Vec<String>,
        jwks: &JwkSet,
    ) -> Result<Self, DiscoveryError> {
        let mut validator = Self::new(config)?;
        let keys: HashMap<String, DecodingKey> = jwks
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
            })
            .collect();
        if keys.is_empty() {
            return Err(DiscoveryError::NoUsableKey);
        }
        validator.keys = tokio::sync::RwLock::new(Some(KeySet {
            issuers,
            keys,
            fetched: Instant::now(),
        }));
        validator.fixed_keys = true;
        Ok(validator)
    }

    pub fn config(&self) -> &EntraAuthConfig {
        &self.config
    }

    fn authority(&self) -> String {
        format!(
            "{}/{}",
            self.config.authority_host.trim_end_matches('/'),
            self.config.tenant_id
        )
    }

    /// The v2 issuer (`{authority}/{tenant}/v2.0`), named as the authorization server.
    pub fn authorization_server(&self) -> String {
        format!("{}/v2.0", self.authority())
    }

    /// Fetches discovery documents and keys now (start-up warm-up; errors are also returned).
    pub async fn prefetch(&self) -> Result<(), DiscoveryError> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        let set = self.fetch().await?;
        *self.keys.write().await = Some(set);
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<T, DiscoveryError> {
        let response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|cause| DiscoveryError::Fetch {
                url: url.to_owned(),
                cause,
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(DiscoveryError::Status {
                url: url.to_owned(),
                status,
            });
        }
        let body = response
            .bytes()
            .await
            .map_err(|cause| DiscoveryError::Read {
                url: url.to_owned(),
                cause,
            })?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(DiscoveryError::TooLarge {
                url: url.to_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|cause| DiscoveryError::Parse {
            url: url.to_owned(),
            cause,
        })
    }

    /// Both discovery documents, then every distinct JWKS they name.
    async fn fetch(&self) -> Result<KeySet, DiscoveryError> {
        let authority = self.authority();
        let v2: Discovery = self
            .get_json(&format!(
                "{authority}/v2.0/.well-known/openid-configuration"
            ))
            .await?;
        let mut issuers = vec![v2.issuer.clone()];
        let mut jwks_uris = vec![v2.jwks_uri.clone()];
        match self
            .get_json::<Discovery>(&format!("{authority}/.well-known/openid-configuration"))
            .await
        {
            Ok(v1) => {
                if !issuers.contains(&v1.issuer) {
                    issuers.push(v1.issuer);
                }
                if !jwks_uris.contains(&v1.jwks_uri) {
                    jwks_uris.push(v1.jwks_uri);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "v1 OIDC discovery failed; only v2 tokens are accepted")
            }
        }
        let mut keys = HashMap::new();
        for uri in &jwks_uris {
            let set: JwkSet = self.get_json(uri).await?;
            for jwk in &set.keys {
                let Some(kid) = jwk.common.key_id.clone() else {
                    continue;
                };
                // Keys this library cannot use (other key types) are skipped, not fatal.
                if let Ok(key) = DecodingKey::from_jwk(jwk) {
                    keys.insert(kid, key);
                }
            }
        }
        if keys.is_empty() {
            return Err(DiscoveryError::NoSigningKey {
                jwks_uris: jwks_uris.join(", "),
            });
        }
        tracing::info!(tenant = %self.config.tenant_id, keys = keys.len(), issuers = ?issuers, "fetched Entra signing keys");
        Ok(KeySet {
            issuers,
            keys,
            fetched: Instant::now(),
        })
    }

    /// The key for `kid` with the accepted issuers, fetching keys when the cache lacks `kid`
    /// (rate-limited) or is old.
    async fn key(&self, kid: &str) -> Result<(DecodingKey, Vec<String>), Rejection> {
        {
            let keys = self.keys.read().await;
            if let Some(set) = keys.as_ref()
                && (self.fixed_keys || set.fetched.elapsed() < MAX_KEY_AGE)
                && let Some(key) = set.keys.get(kid)
            {
                return Ok((key.clone(), set.issuers.clone()));
            }
            if self.fixed_keys {
                return Err(self.unknown_kid(kid));
            }
        }
        let mut last = self.last_fetch.lock().await;
        // Another request may have refreshed while this one waited.
        let have_keys = {
            let keys = self.keys.read().await;
            if let Some(set) = keys.as_ref()
                && let Some(key) = set.keys.get(kid)
                && set.fetched.elapsed() < MAX_KEY_AGE
            {
                return Ok((key.clone(), set.issuers.clone()));
            }
            keys.is_some()
        };
        let may_fetch = last.is_none_or(|at| at.elapsed() >= MIN_KEY_REFRESH_INTERVAL);
        if may_fetch {
            *last = Some(Instant::now());
            match self.fetch().await {
                Ok(set) => *self.keys.write().await = Some(set),
                Err(err) => {
                    tracing::warn!(error = %err, "failed to fetch Entra signing keys");
                    if !have_keys {
                        return Err(Rejection::Unavailable(format!(
                            "the signing keys of tenant {} cannot be fetched; try again shortly",
                            self.config.tenant_id
                        )));
                    }
                }
            }
        } else if !have_keys {
            return Err(Rejection::Unavailable(format!(
                "the signing keys of tenant {} cannot be fetched; try again shortly",
                self.config.tenant_id
            )));
        }
        let keys = self.keys.read().await;
        match keys.as_ref() {
            Some(set) => match set.keys.get(kid) {
                Some(key) => Ok((key.clone(), set.issuers.clone())),
                None => Err(self.unknown_kid(kid)),
            },
            None => Err(Rejection::Unavailable(format!(
                "the signing keys of tenant {} cannot be fetched; try again shortly",
                self.config.tenant_id
            ))),
        }
    }

    fn unknown_kid(&self, kid: &str) -> Rejection {
        invalid(format!(
            "the token is signed with key {} which tenant {} does not publish",
            printable(kid),
            self.config.tenant_id
        ))
    }

    /// Checks a bearer token and returns who the caller is.
    pub async fn validate(&self, token: &str) -> Result<Caller, Rejection> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the token is not a signed JWT (Entra ID issues RS256 JWTs)"))?;
        if header.alg != Algorithm::RS256 {
            return Err(invalid(format!(
                "tokens signed with {:?} are not accepted: Entra ID signs with RS256",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid("the token names no signing key (kid)"))?;
        let (key, issuers) = self.key(&kid).await?;

        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&issuers);
        validation.set_audience(&self.audiences);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
                ErrorKind::InvalidIssuer => format!(
                    "the token was not issued by tenant {} (accepted issuers: {})",
                    self.config.tenant_id,
                    issuers.join(", ")
                ),
                ErrorKind::InvalidAudience => format!(
                    "the token is not for this server (accepted audiences: {})",
                    self.audiences.join(", ")
                ),
                ErrorKind::InvalidSignature => "the token's signature does not verify".to_owned(),
                ErrorKind::MissingRequiredClaim(claim) => {
                    format!("the token has no {} claim", printable(claim))
                }
                _ => "the token is malformed".to_owned(),
            })
        })?;
        let claims = data.claims;
        let required = &self.config.required_roles;
        if !required.is_empty() && !claims.roles.iter().any(|r| required.contains(r)) {
            return Err(Rejection::Forbidden {
                reason: format!(
                    "the token carries none of the app roles this server requires ({}); assign \
                     one to the calling identity",
                    required.join(", ")
                ),
                label: "missing_role",
            });
        }
        let allowed = &self.config.allowed_caller_object_ids;
        if !allowed.is_empty() {
            let oid = claims.oid.as_deref().unwrap_or("");
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(oid)) {
                return Err(Rejection::Forbidden {
                    reason: format!(
                        "caller {} is not among the allowed callers of this server",
                        printable(oid)
                    ),
                    label: "caller_not_allowed",
                });
            }
        }
        Ok(Caller {
            oid: claims.oid,
            app_id: claims.azp.or(claims.appid),
            name: claims.name,
            tenant_id: claims.tid,
            roles: claims.roles,
            groups: claims.groups,
            groups_overage: claims
                .claim_names
                .is_some_and(|names| names.contains_key("groups")),
            preferred_username: claims.preferred_username.or(claims.upn),
            class: None,
            claims: None,
        })
    }
}

/// At most 64 characters of `value` that are safe inside a quoted header parameter.
pub fn printable(value: &str) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .take(64)
        .collect()
}

fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_id_and_its_api_uri_are_both_accepted_audiences() {
        assert_eq!(
            audiences("44444444-0000-0000-0000-000000000000"),
            [
                "44444444-0000-0000-0000-000000000000",
                "api://44444444-0000-0000-0000-000000000000"
            ]
        );
        assert_eq!(
            audiences("api://sales-mcp"),
            ["api://sales-mcp", "sales-mcp"]
        );
    }

    #[test]
    fn reasons_quoted_in_headers_are_made_safe() {
        assert_eq!(printable("ab\"c\\d e\r\n"), "abcde");
        assert_eq!(printable(&"x".repeat(100)).len(), 64);
    }
}

/// Mutations of a valid token through the real validator with a fixed key set (no network):
/// every one is rejected, and the unmutated token is accepted.
#[cfg(test)]
mod properties {
    #![allow(clippy::unwrap_used)]

    use std::sync::LazyLock;

    use base64::Engine as _;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const AUDIENCE: &str = "44444444-4444-4444-8444-444444444444";
    const KID: &str = "test-key";
    const ROLE: &str = "MCP.Read";

    struct Fixture {
        runtime: tokio::runtime::Runtime,
        validator: EntraValidator,
        key: EncodingKey,
        public_pem: String,
        issuer: String,
    }

    static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let key = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(KID.to_owned());
        let issuer = format!("https://login.microsoftonline.com/{TENANT}/v2.0");
        let config = EntraAuthConfig {
            tenant_id: TENANT.to_owned(),
            audience: AUDIENCE.to_owned(),
            required_roles: vec![ROLE.to_owned()],
            allowed_caller_object_ids: Vec::new(),
            // Never contacted: the keys are fixed.
            authority_host: "https://login.invalid".to_owned(),
        };
        let validator =
            EntraValidator::with_keys(config, vec![issuer.clone()], &JwkSet { keys: vec![jwk] })
                .unwrap();
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
            validator,
            key,
            public_pem: pair.public_key_pem(),
            issuer,
        }
    });

    fn now() -> i64 {
        jiff::Timestamp::now().as_second()
    }

    fn claims() -> Value {
        json!({
            "iss": FIXTURE.issuer, "aud": AUDIENCE, "exp": now() + 3600, "nbf": now() - 10,
            "iat": now() - 10, "roles": [ROLE], "oid": "66666666-6666-4666-8666-666666666666",
            "azp": "55555555-5555-4555-8555-555555555555", "ver": "2.0",
        })
    }

    fn header(alg: Algorithm) -> Header {
        let mut header = Header::new(alg);
        header.kid = Some(KID.to_owned());
        header
    }

    fn sign(header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &FIXTURE.key).unwrap()
    }

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    fn validate(token: &str) -> Result<Caller, Rejection> {
        FIXTURE.runtime.block_on(FIXTURE.validator.validate(token))
    }

    /// A claim set that must be refused although the token is signed with the right key.
    fn bad_claims() -> impl Strategy<Value = Value> {
        let wrong = "[a-z:/.0-9-]{0,40}";
        prop_oneof![
            wrong.prop_map(|aud| json!({"aud": aud})),
            Just(json!({"aud": [format!("{AUDIENCE}x")]})),
            Just(json!({"aud": null})),
            wrong.prop_map(|iss| json!({"iss": iss})),
            Just(json!({"iss": "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/"})),
            Just(json!({"iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0/")})),
            (61i64..100_000_000).prop_map(|ago| json!({"exp": now() - ago})),
            Just(json!({"exp": null})),
            Just(json!({"exp": "tomorrow"})),
            (120i64..100_000_000).prop_map(|ahead| json!({"nbf": now() + ahead})),
            Just(json!({"roles": []})),
            Just(json!({"roles": ["mcp.read", "MCP.Write"]})),
            Just(json!({"roles": "MCP.Read"})),
            Just(json!({"roles": null})),
            // nested deeper than serde_json follows, where the claim is read
            Just(json!({"roles": deep(200)})),
            Just(json!({"aud": deep(200)})),
        ]
    }

    fn deep(levels: usize) -> Value {
        (0..levels).fold(json!(1), |inner, _| json!([inner]))
    }

    /// A token that must be refused: the valid one damaged, or one signed the wrong way.
    fn bad_token() -> impl Strategy<Value = String> {
        let valid = sign(&header(Algorithm::RS256), &claims());
        let len = valid.len();
        prop_oneof![
            // flipped bytes anywhere
            prop::collection::vec((0..len, 1u8..=255), 1..4).prop_map({
                let valid = valid.clone();
                move |edits| {
                    let mut bytes = valid.clone().into_bytes();
                    for (at, xor) in edits {
                        bytes[at] ^= xor;
                    }
                    String::from_utf8_lossy(&bytes).into_owned()
                }
            }),
            // segments swapped, dropped, repeated or cut
            (0usize..3, 0usize..3).prop_filter_map("same segment", {
                let valid = valid.clone();
                move |(a, b)| {
                    let mut parts: Vec<&str> = valid.split('.').collect();
                    (a != b).then(|| {
                        parts.swap(a, b);
                        parts.join(".")
                    })
                }
            }),
            (1..len).prop_map({
                let valid = valid.clone();
                move |n| valid[..n].to_owned()
            }),
            Just(format!("{valid}.")),
            Just(format!("{valid}.{}", b64("x"))),
            Just(valid.replacen('.', "..", 1)),
            Just(format!(" {valid}")),
            // alg none, HS256 keyed with the public key, other algorithms with the key
            Just(format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": KID}).to_string()),
                b64(&claims().to_string())
            )),
            Just(
                jsonwebtoken::encode(
                    &header(Algorithm::HS256),
                    &claims(),
                    &EncodingKey::from_secret(FIXTURE.public_pem.as_bytes()),
                )
                .unwrap()
            ),
            prop::sample::select(vec![Algorithm::RS384, Algorithm::RS512, Algorithm::PS256])
                .prop_map(|alg| sign(&header(alg), &claims())),
            // unknown or missing key id
            "[ -~]{0,300}".prop_map(|kid| {
                let mut header = header(Algorithm::RS256);
                header.kid = (kid != KID).then_some(kid);
                sign(&header, &claims())
            }),
            // right key, wrong claims
            bad_claims().prop_map(|changes| {
                let mut claims = claims();
                for (name, value) in changes.as_object().unwrap() {
                    claims[name] = value.clone();
                }
                sign(&header(Algorithm::RS256), &claims)
            }),
            // arbitrary text
            "[ -~]{0,200}",
        ]
    }

    #[test]
    fn the_valid_token_is_accepted_and_extra_claims_do_not_matter() {
        let token = sign(&header(Algorithm::RS256), &claims());
        let caller = validate(&token).unwrap();
        assert_eq!(
            caller.app_id.as_deref(),
            Some("55555555-5555-4555-8555-555555555555")
        );
        let mut big = claims();
        big["blob"] = json!("x".repeat(100_000));
        big["nested"] = deep(100);
        big["aud"] = json!(["other", format!("api://{AUDIENCE}")]);
        assert!(validate(&sign(&header(Algorithm::RS256), &big)).is_ok());
    }

    /// Headers and claims are read before and after the signature check; neither may overflow
    /// a tokio worker's stack, however deep the JSON (written out as text: serde_json's own
    /// printer would recurse).
    #[test]
    fn deeply_nested_json_in_a_token_is_rejected_without_overflowing_the_stack() {
        let deep = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        let deep_header = format!(r#"{{"alg":"RS256","kid":"{KID}","x":{}}}"#, deep(100_000));
        let deep_claims = format!(r#"{{"aud":"{AUDIENCE}","x":{}}}"#, deep(100_000));
        let signature = b64("not a signature");
        let tokens = [
            format!(
                "{}.{}.{signature}",
                b64(&deep_header),
                b64(&claims().to_string())
            ),
            format!(
                "{}.{}.{signature}",
                b64(&serde_json::to_string(&header(Algorithm::RS256)).unwrap()),
                b64(&deep_claims)
            ),
        ];
        let _ = &*FIXTURE;
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                for token in tokens {
                    assert!(matches!(validate(&token), Err(Rejection::Invalid(_))));
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn mutated_and_missigned_tokens_are_rejected(token in bad_token()) {
            match validate(&token) {
                Err(Rejection::Invalid(_) | Rejection::Forbidden { .. }) => {}
                other => prop_assert!(false, "{token:?} gave {other:?}"),
            }
        }
    }
}
