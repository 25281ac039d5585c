//! Caller tokens through the real validator (`EntraValidator::validate`) with a fixed key set, no
//! network. The input picks one of: any text as the token; the valid token with byte edits; a
//! header the fuzzer writes, signed with the real key, HS256 with the public key as the secret,
//! or unsigned; claims the fuzzer writes, signed with the real key. Invariants: nothing panics;
//! a token is accepted only if it is the valid token itself or is signed by the key with RS256
//! and its claims carry an accepted issuer and audience, a live `exp`, no future `nbf` and the
//! required role.
#![no_main]

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use pgmcp_crds::config::EntraAuthConfig;
use pgmcp_server::auth::jwt::EntraValidator;
use serde_json::{Value, json};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const AUDIENCE: &str = "44444444-4444-4444-8444-444444444444";
const KID: &str = "fuzz-key";
const ROLE: &str = "MCP.Read";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    validator: EntraValidator,
    key: EncodingKey,
    public_pem: String,
    issuer: String,
    valid: String,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let key = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).expect("key");
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some(KID.to_owned());
    let issuer = format!("https://login.microsoftonline.com/{TENANT}/v2.0");
    let config = EntraAuthConfig {
        tenant_id: TENANT.to_owned(),
        audience: AUDIENCE.to_owned(),
        required_roles: vec![ROLE.to_owned()],
        allowed_caller_object_ids: Vec::new(),
        authority_host: "https://login.microsoftonline.com".to_owned(),
    };
    let validator =
        EntraValidator::with_keys(config, vec![issuer.clone()], &JwkSet { keys: vec![jwk] })
            .expect("validator");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let valid = sign(&key, &rs256(), &good_claims(&issuer));
    let fixture = Fixture {
        runtime,
        validator,
        key,
        public_pem: pair.public_key_pem(),
        issuer,
        valid,
    };
    assert!(
        fixture.accepts(&fixture.valid),
        "the valid token is accepted"
    );
    fixture
});

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn rs256() -> Header {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.to_owned());
    header
}

fn good_claims(issuer: &str) -> Value {
    json!({
        "iss": issuer, "aud": AUDIENCE, "exp": now() + 3600, "nbf": now() - 60, "iat": now() - 60,
        "roles": [ROLE], "oid": "66666666-6666-4666-8666-666666666666",
        "azp": "55555555-5555-4555-8555-555555555555",
    })
}

fn sign(key: &EncodingKey, header: &Header, claims: &Value) -> String {
    jsonwebtoken::encode(header, claims, key).expect("sign")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Fixture {
    fn accepts(&self, token: &str) -> bool {
        self.runtime
            .block_on(self.validator.validate(token))
            .is_ok()
    }

    /// Whether the claims (of a token signed with the key) should pass.
    fn claims_pass(&self, claims: &Value) -> bool {
        let now = now();
        let number = |name: &str| claims.get(name).and_then(Value::as_f64);
        let aud_ok = |a: &Value| {
            a.as_str()
                .is_some_and(|a| a == AUDIENCE || a == format!("api://{AUDIENCE}"))
        };
        let audience = match claims.get("aud") {
            Some(Value::Array(list)) => list.iter().any(aud_ok),
            Some(one) => aud_ok(one),
            None => false,
        };
        let roles = claims
            .get("roles")
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|r| r == ROLE));
        claims.get("iss").and_then(Value::as_str) == Some(self.issuer.as_str())
            && audience
            && number("exp").is_some_and(|exp| exp + 61.0 >= now as f64)
            && number("nbf").is_none_or(|nbf| nbf - 61.0 <= now as f64)
            && roles
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = &*FIXTURE;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        // Any text.
        0 => {
            let token = String::from_utf8_lossy(rest);
            if fixture.accepts(&token) {
                assert_eq!(token, fixture.valid, "accepted a token the fuzzer wrote");
            }
        }
        // The valid token with edits: (position, xor) pairs.
        1 => {
            let mut token = fixture.valid.clone().into_bytes();
            for edit in rest.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % token.len();
                token[at] ^= edit[2];
            }
            if let Ok(token) = String::from_utf8(token)
                && fixture.accepts(&token)
            {
                assert_eq!(token, fixture.valid, "accepted an edited token");
            }
        }
        // A header the fuzzer writes over valid claims: signed with the key, HS256 with the
        // public key as the secret, or no signature (alg none).
        2 => {
            let claims = b64(good_claims(&fixture.issuer).to_string().as_bytes());
            let (how, header) = rest.split_first().unwrap_or((&0, &[]));
            let header = b64(header);
            let message = format!("{header}.{claims}");
            let signature = match how % 3 {
                0 => jsonwebtoken::crypto::sign(message.as_bytes(), &fixture.key, Algorithm::RS256)
                    .expect("sign"),
                1 => jsonwebtoken::crypto::sign(
                    message.as_bytes(),
                    &EncodingKey::from_secret(fixture.public_pem.as_bytes()),
                    Algorithm::HS256,
                )
                .expect("sign"),
                _ => String::new(),
            };
            let token = format!("{message}.{signature}");
            if fixture.accepts(&token) {
                let header: Value = serde_json::from_slice(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(header)
                        .unwrap_or_default(),
                )
                .unwrap_or(Value::Null);
                assert_eq!(
                    how % 3,
                    0,
                    "accepted a token not signed with RS256: {header}"
                );
                assert_eq!(header["alg"], "RS256", "accepted header {header}");
                assert_eq!(header["kid"], KID, "accepted header {header}");
            }
        }
        // Claims the fuzzer writes, signed with the key.
        _ => {
            let Ok(claims) = serde_json::from_slice::<Value>(rest) else {
                return;
            };
            if !claims.is_object() {
                return;
            }
            let token = sign(&fixture.key, &rs256(), &claims);
            if fixture.accepts(&token) {
                assert!(fixture.claims_pass(&claims), "accepted claims {claims}");
            }
        }
    }
});
