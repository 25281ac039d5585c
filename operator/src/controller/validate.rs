//! Validate: the checks the apiserver cannot make (referenced Secrets, quantities it stores as
//! text), turning a binding plus what fetch read into [`Valid`]. Pure: no client here.
//!
//! Errors here need a change from the user: they become `Stalled` with a reason naming the
//! field, not a retry loop.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource as _;
use pgmcp_crds::config::LimitsConfig;
use pgmcp_crds::v1alpha1::{PostgresMcpBinding, PostgresMcpBindingSpec, SecretKeyRef};

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
    #[error(
        "secret {namespace}/{name} named in {field} does not exist: create it with the keys {keys}"
    )]
    SecretNotFound {
        namespace: String,
        name: String,
        field: &'static str,
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
            reference,
            inputs.admin_secret.as_ref(),
            "spec.postgres.admin.passwordSecretRef",
        )?;
    }

    let identity = match (&spec.identity.entra, &spec.identity.password) {
        (Some(entra), _) => Identity::Entra {
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
        (None, None) => {
            return Err(Error::Field {
                field: "spec.identity",
                value: String::new(),
                problem: "set exactly one of identity.entra or identity.password".to_owned(),
            });
        }
    };

    let limits = &spec.server.limits;
    let limits = LimitsConfig {
        max_rows: u32::try_from(limits.max_rows).map_err(|_| Error::Field {
            field: "spec.server.limits.maxRows",
            value: limits.max_rows.to_string(),
            problem: "must be positive".to_owned(),
        })?,
        max_bytes: parse_quantity(&limits.max_bytes).map_err(|problem| Error::Field {
            field: "spec.server.limits.maxBytes",
            value: limits.max_bytes.clone(),
            problem,
        })?,
        statement_timeout_ms: crate::settings::parse_duration(&limits.statement_timeout)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(|problem| Error::Field {
                field: "spec.server.limits.statementTimeout",
                value: limits.statement_timeout.clone(),
                problem,
            })?,
    };

    Ok(Valid {
        name,
        namespace,
        owner,
        spec: spec.clone(),
        identity,
        limits,
    })
}

fn check_secret(
    namespace: &str,
    reference: &SecretKeyRef,
    secret: Option<&Secret>,
    field: &'static str,
) -> Result<(), Error> {
    let keys = [&reference.username_key, &reference.password_key];
    let Some(secret) = secret else {
        return Err(Error::SecretNotFound {
            namespace: namespace.to_owned(),
            name: reference.name.clone(),
            field,
            keys: format!("{} and {}", keys[0], keys[1]),
        });
    };
    for key in keys {
        let present = secret.data.as_ref().is_some_and(|d| d.contains_key(key))
            || secret
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(key));
        if !present {
            return Err(Error::SecretKeyMissing {
                namespace: namespace.to_owned(),
                name: reference.name.clone(),
                field,
                key: key.clone(),
            });
        }
    }
    Ok(())
}

/// Bytes in a Kubernetes quantity such as `1Mi`, `512Ki`, `2M` or `1048576`.
pub fn parse_quantity(text: &str) -> Result<u64, String> {
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
        other => {
            return Err(format!(
                "unsupported suffix {other:?} (use Ki, Mi, Gi, k, M or G)"
            ));
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let whole: u64 = whole
        .parse()
        .map_err(|_| "expected a number such as 1Mi".to_owned())?;
    let mut bytes = whole
        .checked_mul(factor)
        .ok_or_else(|| "too large".to_owned())?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).map_err(|_| "too many digits".to_owned())?;
        let scale = 10u64
            .checked_pow(digits)
            .ok_or_else(|| "too many digits".to_owned())?;
        let fraction: u64 = fraction
            .parse()
            .map_err(|_| "expected a number such as 1.5Mi".to_owned())?;
        bytes += fraction.saturating_mul(factor) / scale;
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
        assert!(parse_quantity("1Ti").unwrap_err().contains("Ki, Mi"));
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
                statement_timeout_ms: 15_000
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

    #[test]
    fn entra_mode_needs_no_secret() {
        let valid = validate(&binding("azure-entra-foundry.yaml"), &Inputs::default()).unwrap();
        assert_eq!(valid.identity.role(), "sales-mcp");
    }
}
