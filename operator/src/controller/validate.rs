//! Validate: the checks the apiserver cannot make (referenced Secrets, quantities it stores as
//! text), turning a binding plus what fetch read into [`Valid`]. Pure: no client here.
//!
//! Errors here need a change from the user: they become `Stalled` with a reason naming the
//! field, not a retry loop.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource as _;
use pgmcp_crds::config::LimitsConfig;
use pgmcp_crds::v1alpha1::{PostgresMcpBinding, PostgresMcpBindingSpec};

use super::fetch::Inputs;

/// A binding that passed validation, with the values build needs already parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Valid {
    pub name: String,
    pub namespace: String,
    pub owner: OwnerReference,
    pub spec: PostgresMcpBindingSpec,
    pub identity: Identity,
    pub limits: LimitsConfig,
}

/// How the MCP server signs in to PostgreSQL.
#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    /// Workload identity: a token of the managed identity is the password.
    Entra {
        client_id: String,
        tenant_id: String,
        role: String,
    },
    /// A LOGIN role whose password is in a Secret the binding owns.
    Password { role: String, secret_name: String },
}

impl Identity {
    pub fn role(&self) -> &str {
        match self {
            Identity::Entra { role, .. } | Identity::Password { role, .. } => role,
        }
    }
}

/// A binding that cannot be reconciled until the user changes something.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("binding has no {0} (it was not read from the apiserver)")]
    Metadata(&'static str),
    #[error("secret {namespace}/{name} named in {field} does not exist: create it with {keys}")]
    SecretNotFound {
        namespace: String,
        name: String,
        field: &'static str,
        /// "the keys a and b", "the key c".
        keys: String,
    },
    #[error("secret {namespace}/{name} named in {field} has no key {key}")]
    SecretKeyMissing {
        namespace: String,
        name: String,
        field: &'static str,
        key: String,
    },
    #[error("{field} {value:?} is not valid: {problem}")]
    Field {
        field: &'static str,
        value: String,
        problem: String,
    },
}

impl Error {
    /// Condition reason (CamelCase, bounded).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Metadata(_) | Error::Field { .. } => "InvalidSpec",
            Error::SecretNotFound { .. } => "SecretNotFound",
            Error::SecretKeyMissing { .. } => "SecretKeyMissing",
        }
    }

    /// True when the fix can happen outside the binding (a Secret appears), so the binding is
    /// re-checked periodically instead of only on its own change.
    pub fn waits_for_other_object(&self) -> bool {
        matches!(
            self,
            Error::SecretNotFound { .. } | Error::SecretKeyMissing { .. }
        )
    }
}

/// Checks `binding` against what fetch found.
pub fn validate(binding: &PostgresMcpBinding, inputs: &Inputs) -> Result<Valid, Error> {
    let name = binding
        .metadata
        .name
        .clone()
        .ok_or(Error::Metadata("name"))?;
    let namespace = binding
        .metadata
        .namespace
        .clone()
        .ok_or(Error::Metadata("namespace"))?;
    let owner = binding
        .controller_owner_ref(&())
        .ok_or(Error::Metadata("uid"))?;
    let spec = &binding.spec;

    if let Some(reference) = &spec.postgres.admin.password_secret_ref {
        check_secret(
            &namespace,
            &reference.name,
            &[&reference.username_key, &reference.password_key],
            inputs.admin_secret.as_ref(),
            "spec.postgres.admin.passwordSecretRef",
        )?;
    }
    // Without this check a missing Secret would leave the server's new pods in
    // CreateContainerConfigError, saying nothing on the binding.
    let headers = spec
        .server
        .telemetry
        .as_ref()
        .and_then(|t| t.headers_secret_ref.as_ref());
    if let Some(reference) = headers {
        check_secret(
            &namespace,
            &reference.name,
            &[&reference.key],
            inputs.telemetry_headers_secret.as_ref(),
            "spec.server.telemetry.headersSecretRef",
        )?;
    }

    let identity = match (&spec.identity.entra, &spec.identity.password) {
        (Some(entra), None) => Identity::Entra {
            client_id: entra.client_id.clone(),
            tenant_id: entra.tenant_id.clone(),
            role: entra.principal_name.clone(),
        },
        (None, Some(password)) => Identity::Password {
            role: password.role_name.clone(),
            secret_name: password
                .secret_name
                .clone()
                .unwrap_or_else(|| format!("{name}-postgres")),
        },
        (None, None) | (Some(_), Some(_)) => {
            return Err(Error::Field {
                field: "spec.identity",
                value: String::new(),
                problem: "set exactly one of identity.entra or identity.password".to_owned(),
            });
        }
    };

    let limits = check_limits(&spec.server.limits)?;

    Ok(Valid {
        name,
        namespace,
        owner,
        spec: spec.clone(),
        identity,
        limits,
    })
}

/// Largest and smallest limits, as the CRD's CEL rules on `spec.server.limits` state them. The
/// apiserver enforces those rules on create and update; they are checked again here because a
/// binding stored under an older CRD, or applied while the rules were off, must stall with a
/// reason naming the field rather than reach the server with `maxRows: 0` or
/// `statementTimeout: 0s` (which it refuses at start, so its pod would crash-loop; to PostgreSQL
/// a timeout of 0 is none at all) or a quantity that overflowed.
const MAX_ROWS: std::ops::RangeInclusive<i64> = 1..=100_000;
const MAX_BYTES: std::ops::RangeInclusive<u64> = 1024..=64 * 1024 * 1024;
const STATEMENT_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1..=10 * 60 * 1000;

/// The server's limits from `spec.server.limits`, each within the CRD's bounds.
fn check_limits(limits: &pgmcp_crds::v1alpha1::ServerLimits) -> Result<LimitsConfig, Error> {
    let out_of_range = |field: &'static str, value: String, range: &str| Error::Field {
        field,
        value,
        problem: format!("must be between {range}"),
    };
    let max_rows = u32::try_from(limits.max_rows)
        .ok()
        .filter(|n| MAX_ROWS.contains(&i64::from(*n)))
        .ok_or_else(|| {
            out_of_range(
                "spec.server.limits.maxRows",
                limits.max_rows.to_string(),
                "1 and 100000",
            )
        })?;
    let max_bytes = parse_quantity(&limits.max_bytes).map_err(|problem| Error::Field {
        field: "spec.server.limits.maxBytes",
        value: limits.max_bytes.clone(),
        problem: problem.to_string(),
    })?;
    if !MAX_BYTES.contains(&max_bytes) {
        return Err(out_of_range(
            "spec.server.limits.maxBytes",
            limits.max_bytes.clone(),
            "1Ki and 64Mi",
        ));
    }
    let statement_timeout_ms = crate::settings::parse_duration(&limits.statement_timeout)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|problem| Error::Field {
            field: "spec.server.limits.statementTimeout",
            value: limits.statement_timeout.clone(),
            problem: problem.to_string(),
        })?;
    if !STATEMENT_TIMEOUT_MS.contains(&statement_timeout_ms) {
        return Err(out_of_range(
            "spec.server.limits.statementTimeout",
            limits.statement_timeout.clone(),
            "1ms and 10m",
        ));
    }
    let discovery_max_bytes =
        parse_quantity(&limits.discovery_max_bytes).map_err(|problem| Error::Field {
            field: "spec.server.limits.discoveryMaxBytes",
            value: limits.discovery_max_bytes.clone(),
            problem: problem.to_string(),
        })?;
    if !pgmcp_crds::config::DISCOVERY_MAX_BYTES.contains(&discovery_max_bytes) {
        return Err(out_of_range(
            "spec.server.limits.discoveryMaxBytes",
            limits.discovery_max_bytes.clone(),
            "4Ki and 1Mi",
        ));
    }
    Ok(LimitsConfig {
        max_rows,
        max_bytes,
        statement_timeout_ms,
        discovery_max_bytes,
    })
}

/// Secret `name` (as fetch found it, if it exists) has every one of `keys`.
fn check_secret(
    namespace: &str,
    name: &str,
    keys: &[&str],
    secret: Option<&Secret>,
    field: &'static str,
) -> Result<(), Error> {
    let Some(secret) = secret else {
        let keys = match keys {
            [key] => format!("the key {key}"),
            [first @ .., last] => format!("the keys {} and {last}", first.join(", ")),
            [] => "any keys".to_owned(),
        };
        return Err(Error::SecretNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            field,
            keys,
        });
    };
    for &key in keys {
        let present = secret.data.as_ref().is_some_and(|d| d.contains_key(key))
            || secret
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(key));
        if !present {
            return Err(Error::SecretKeyMissing {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                field,
                key: key.to_owned(),
            });
        }
    }
    Ok(())
}

/// Why [`parse_quantity`] could not read a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("unsupported suffix {0:?} (use Ki, Mi, Gi, k, M or G)")]
    UnsupportedSuffix(String),
    #[error("expected a number such as 1Mi")]
    NotANumber,
    #[error("expected a number such as 1.5Mi")]
    NotAFraction,
    #[error("too many digits")]
    TooManyDigits,
    #[error("too large")]
    TooLarge,
}

/// Bytes in a Kubernetes quantity such as `1Mi`, `512Ki`, `2M` or `1048576`.
pub fn parse_quantity(text: &str) -> Result<u64, QuantityError> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let factor: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => return Err(QuantityError::UnsupportedSuffix(other.to_owned())),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let whole: u64 = whole.parse().map_err(|_| QuantityError::NotANumber)?;
    let mut bytes = whole.checked_mul(factor).ok_or(QuantityError::TooLarge)?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).map_err(|_| QuantityError::TooManyDigits)?;
        let scale = 10u64
            .checked_pow(digits)
            .ok_or(QuantityError::TooManyDigits)?;
        let fraction: u64 = fraction.parse().map_err(|_| QuantityError::NotAFraction)?;
        // fraction < scale, so this is below `factor` and fits a u64.
        let part = u128::from(fraction) * u128::from(factor) / u128::from(scale);
        bytes = u64::try_from(part)
            .ok()
            .and_then(|part| bytes.checked_add(part))
            .ok_or(QuantityError::TooLarge)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;
    use crate::controller::tests::binding;

    fn secret(keys: &[&str]) -> Secret {
        Secret {
            data: Some(
                keys.iter()
                    .map(|k| ((*k).to_owned(), ByteString(b"x".to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn quantities_are_read_as_kubernetes_writes_them() {
        assert_eq!(parse_quantity("1Mi"), Ok(1_048_576));
        assert_eq!(parse_quantity("512Ki"), Ok(524_288));
        assert_eq!(parse_quantity("2M"), Ok(2_000_000));
        assert_eq!(parse_quantity("1.5Mi"), Ok(1_572_864));
        assert_eq!(parse_quantity("4096"), Ok(4096));
        assert_eq!(
            parse_quantity("1Ti").unwrap_err().to_string(),
            "unsupported suffix \"Ti\" (use Ki, Mi, Gi, k, M or G)"
        );
        assert!(parse_quantity("Mi").is_err());
    }

    #[test]
    fn password_mode_defaults_the_secret_name_and_parses_limits() {
        let valid = validate(
            &binding("password.yaml"),
            &Inputs {
                admin_secret: Some(secret(&["username", "password"])),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            valid.identity,
            Identity::Password {
                role: "shop_mcp".to_owned(),
                secret_name: "shop-postgres".to_owned()
            }
        );
        assert_eq!(
            valid.limits,
            LimitsConfig {
                max_rows: 1000,
                max_bytes: 1_048_576,
                statement_timeout_ms: 15_000,
                discovery_max_bytes: 16_384,
            }
        );
        assert_eq!(valid.owner.controller, Some(true));
    }

    #[test]
    fn missing_admin_secret_names_the_secret_and_the_field() {
        let err = validate(&binding("password.yaml"), &Inputs::default()).unwrap_err();
        assert_eq!(err.reason(), "SecretNotFound");
        assert!(err.waits_for_other_object());
        assert_eq!(
            err.to_string(),
            "secret agents/pg-admin named in spec.postgres.admin.passwordSecretRef does not \
             exist: create it with the keys username and password"
        );
    }

    #[test]
    fn admin_secret_without_the_password_key_is_named() {
        let err = validate(
            &binding("password.yaml"),
            &Inputs {
                admin_secret: Some(secret(&["username"])),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.reason(), "SecretKeyMissing");
        assert!(err.to_string().contains("has no key password"), "{err}");
    }

    fn with_headers_secret(example: &str) -> PostgresMcpBinding {
        let mut binding = binding(example);
        binding.spec.server.telemetry = Some(
            serde_json::from_value(serde_json::json!({
                "otlpEndpoint": "http://otel-collector:4318",
                "headersSecretRef": {"name": "otel-headers", "key": "headers"}
            }))
            .unwrap(),
        );
        binding
    }

    #[test]
    fn missing_telemetry_headers_secret_names_the_secret_and_the_field() {
        let err = validate(
            &with_headers_secret("azure-entra-foundry.yaml"),
            &Inputs::default(),
        )
        .unwrap_err();
        assert_eq!(err.reason(), "SecretNotFound");
        assert!(err.waits_for_other_object());
        assert_eq!(
            err.to_string(),
            "secret agents/otel-headers named in spec.server.telemetry.headersSecretRef does \
             not exist: create it with the key headers"
        );
    }

    #[test]
    fn telemetry_headers_secret_without_its_key_is_named_and_with_it_passes() {
        let binding = with_headers_secret("password.yaml");
        let inputs = |keys: &[&str]| Inputs {
            admin_secret: Some(secret(&["username", "password"])),
            telemetry_headers_secret: Some(secret(keys)),
            ..Default::default()
        };
        let err = validate(&binding, &inputs(&["Authorization"])).unwrap_err();
        assert_eq!(err.reason(), "SecretKeyMissing");
        assert_eq!(
            err.to_string(),
            "secret agents/otel-headers named in spec.server.telemetry.headersSecretRef has no \
             key headers"
        );
        assert!(validate(&binding, &inputs(&["headers"])).is_ok());
        // Without a headersSecretRef no Secret is needed.
        let mut plain = binding.clone();
        plain
            .spec
            .server
            .telemetry
            .as_mut()
            .unwrap()
            .headers_secret_ref = None;
        assert!(
            validate(
                &plain,
                &Inputs {
                    admin_secret: Some(secret(&["username", "password"])),
                    ..Default::default()
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn entra_mode_needs_no_secret() {
        let valid = validate(&binding("azure-entra-foundry.yaml"), &Inputs::default()).unwrap();
        assert_eq!(valid.identity.role(), "sales-mcp");
    }

    #[test]
    fn limits_outside_the_crd_bounds_are_refused_with_the_field() {
        let with_limits = |rows: i32, bytes: &str, timeout: &str| {
            let mut binding = binding("azure-entra-foundry.yaml");
            binding.spec.server.limits.max_rows = rows;
            binding.spec.server.limits.max_bytes = bytes.to_owned();
            binding.spec.server.limits.statement_timeout = timeout.to_owned();
            validate(&binding, &Inputs::default())
        };
        for (rows, bytes, timeout, field) in [
            // The server refuses to start with 0 (its pod would crash-loop).
            (0, "1Mi", "15s", "spec.server.limits.maxRows"),
            (100_001, "1Mi", "15s", "spec.server.limits.maxRows"),
            (-1, "1Mi", "15s", "spec.server.limits.maxRows"),
            (1000, "0", "15s", "spec.server.limits.maxBytes"),
            (1000, "1023", "15s", "spec.server.limits.maxBytes"),
            (1000, "65Mi", "15s", "spec.server.limits.maxBytes"),
            // Overflowed u64 (a panic in debug builds, a wrapped small value in release).
            (
                1000,
                "18446744073709551.999k",
                "15s",
                "spec.server.limits.maxBytes",
            ),
            // Refused by the server too; PostgreSQL reads a statement_timeout of 0 as none at all.
            (1000, "1Mi", "0s", "spec.server.limits.statementTimeout"),
            (1000, "1Mi", "0ms", "spec.server.limits.statementTimeout"),
            (1000, "1Mi", "10m1ms", "spec.server.limits.statementTimeout"),
            (
                1000,
                "1Mi",
                "4294967295h4294967295h",
                "spec.server.limits.statementTimeout",
            ),
        ] {
            match with_limits(rows, bytes, timeout) {
                Err(Error::Field { field: got, .. }) => {
                    assert_eq!(got, field, "{rows} {bytes} {timeout}")
                }
                other => panic!("{rows} {bytes} {timeout}: {other:?}"),
            }
        }
        let valid = with_limits(100_000, "64Mi", "10m").unwrap();
        assert_eq!(
            valid.limits,
            LimitsConfig {
                max_rows: 100_000,
                max_bytes: 64 << 20,
                statement_timeout_ms: 600_000,
                discovery_max_bytes: 16_384,
            }
        );
        for budget in ["2Ki", "2Mi", "lots"] {
            let mut binding = binding("azure-entra-foundry.yaml");
            binding.spec.server.limits.discovery_max_bytes = budget.to_owned();
            match validate(&binding, &Inputs::default()) {
                Err(Error::Field { field, .. }) => {
                    assert_eq!(field, "spec.server.limits.discoveryMaxBytes", "{budget}")
                }
                other => panic!("{budget}: {other:?}"),
            }
        }
        let valid = with_limits(1, "1Ki", "1ms").unwrap();
        assert_eq!(valid.limits.statement_timeout_ms, 1);
    }

    #[test]
    fn caller_classes_without_default_grants_are_accepted() {
        let mut binding = binding("azure-entra.yaml");
        crate::controller::build::tests::with_callers(&mut binding);
        let valid = validate(&binding, &Inputs::default()).unwrap();
        assert!(valid.spec.access.grants.is_empty());
        assert_eq!(valid.spec.access.callers.len(), 2);
    }

    #[test]
    fn both_identities_are_refused() {
        let mut binding = binding("azure-entra-foundry.yaml");
        binding.spec.identity.password = self::binding("password.yaml").spec.identity.password;
        let err = validate(&binding, &Inputs::default()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Field {
                    field: "spec.identity",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// `^([0-9]+(ms|s|m|h))+$`, the CRD's pattern for statementTimeout.
        fn crd_duration(text: &str) -> bool {
            let mut rest = text;
            if rest.is_empty() {
                return false;
            }
            while !rest.is_empty() {
                let digits =
                    rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                if digits == 0 {
                    return false;
                }
                rest = &rest[digits..];
                rest = match ["ms", "s", "m", "h"].iter().find(|u| rest.starts_with(**u)) {
                    Some(unit) => &rest[unit.len()..],
                    None => return false,
                };
            }
            true
        }

        fn quantity() -> impl Strategy<Value = String> {
            prop_oneof![
                (
                    "[0-9]{0,21}",
                    "(\\.[0-9]{0,21})?",
                    "(|k|M|G|Ki|Mi|Gi|Ti|m|e3| )"
                )
                    .prop_map(|(a, b, c)| format!("{a}{b}{c}")),
                "[ -~]{0,20}",
            ]
        }

        fn duration() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::collection::vec(("[0-9]{0,11}", "(ms|s|m|h|us|d|)"), 1..4)
                    .prop_map(|parts| parts.into_iter().map(|(n, u)| n + &u).collect()),
                "[ -~]{0,20}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn validate_never_panics_names_the_field_and_accepts_only_what_the_crd_allows(
                example in prop::sample::select(vec!["password.yaml", "azure-entra-foundry.yaml"]),
                rows in prop_oneof![any::<i32>(), -2i32..100_003],
                bytes in quantity(),
                timeout in duration(),
                identities in 0u8..4,
                admin_keys in prop::sample::select(vec![None, Some(vec![]), Some(vec!["username"]),
                    Some(vec!["username", "password"])]),
            ) {
                let mut binding = binding(example);
                let limits = &mut binding.spec.server.limits;
                limits.max_rows = rows;
                limits.max_bytes = bytes.clone();
                limits.statement_timeout = timeout.clone();
                let other = if example == "password.yaml" { "azure-entra.yaml" } else { "password.yaml" };
                let other = self::binding(other).spec.identity;
                match identities {
                    0 => {}
                    1 => binding.spec.identity = other,
                    2 => {
                        binding.spec.identity.entra = binding.spec.identity.entra.or(other.entra);
                        binding.spec.identity.password =
                            binding.spec.identity.password.or(other.password);
                    }
                    _ => {
                        binding.spec.identity.entra = None;
                        binding.spec.identity.password = None;
                    }
                }
                let inputs = Inputs {
                    admin_secret: admin_keys.map(|keys| secret(&keys)),
                    ..Default::default()
                };
                match validate(&binding, &inputs) {
                    Ok(valid) => {
                        let l = valid.limits;
                        prop_assert_eq!(i64::from(l.max_rows), i64::from(rows));
                        prop_assert!((1..=100_000).contains(&l.max_rows));
                        prop_assert!((1024..=64 << 20).contains(&l.max_bytes), "{bytes:?}: {l:?}");
                        prop_assert!((1..=600_000).contains(&l.statement_timeout_ms), "{timeout:?}");
                        prop_assert!(crd_duration(timeout.trim()), "{timeout:?}");
                        if let Ok(n) = bytes.parse::<u64>() {
                            prop_assert_eq!(l.max_bytes, n);
                        }
                        let identity = &binding.spec.identity;
                        prop_assert!(identity.entra.is_some() != identity.password.is_some());
                    }
                    Err(err @ Error::Field { field, .. }) => {
                        prop_assert!(field.starts_with("spec."), "{field}");
                        prop_assert!(err.to_string().starts_with(field), "{err}");
                    }
                    Err(err @ (Error::SecretNotFound { .. } | Error::SecretKeyMissing { .. })) => {
                        prop_assert!(err.to_string().contains("spec.postgres.admin.passwordSecretRef"), "{err}");
                    }
                    Err(err @ Error::Metadata(_)) => prop_assert!(false, "{err}"),
                }
            }
        }
    }
}
