//! Arbitrary JSON as a binding's spec, through the operator's `validate`. Nothing panics; an
//! error names a `spec.` field path (or is about a missing Secret); what `validate` accepts has
//! limits inside the CRD's bounds (so the server never runs with `maxRows: 0` or without a
//! statement timeout) and an identity taken from the spec.
#![no_main]

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use libfuzzer_sys::fuzz_target;
use pgmcp_crds::v1alpha1::{PostgresMcpBinding, PostgresMcpBindingSpec};
use pgmcp_operator::controller::fetch::Inputs;
use pgmcp_operator::controller::validate::{Error, Identity, validate};

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

fuzz_target!(|data: &[u8]| {
    let Some((&mode, json)) = data.split_first() else {
        return;
    };
    let Ok(spec) = serde_json::from_slice::<PostgresMcpBindingSpec>(json) else {
        return;
    };
    let mut binding = PostgresMcpBinding::new("fuzz", spec);
    binding.metadata.namespace = Some("agents".to_owned());
    binding.metadata.uid = Some("0f7c1a9e-0000-4000-8000-000000000001".to_owned());
    let inputs = Inputs {
        admin_secret: match mode % 3 {
            0 => None,
            1 => Some(secret(&["username"])),
            _ => Some(secret(&["username", "password", "user", "pass"])),
        },
        password_secret: None,
    };
    match validate(&binding, &inputs) {
        Ok(valid) => {
            let limits = valid.limits;
            assert!((1..=100_000).contains(&limits.max_rows), "{limits:?}");
            assert!((1024..=64 << 20).contains(&limits.max_bytes), "{limits:?}");
            assert!(
                (1..=600_000).contains(&limits.statement_timeout_ms),
                "{limits:?}"
            );
            let spec = &binding.spec;
            assert_eq!(limits.max_rows as i32, spec.server.limits.max_rows);
            match (
                &valid.identity,
                &spec.identity.entra,
                &spec.identity.password,
            ) {
                (Identity::Entra { role, .. }, Some(entra), _) => {
                    assert_eq!(role, &entra.principal_name)
                }
                (Identity::Password { role, .. }, None, Some(password)) => {
                    assert_eq!(role, &password.role_name)
                }
                (identity, _, _) => panic!("identity {identity:?} from {:?}", spec.identity),
            }
        }
        Err(Error::Field { field, .. }) => assert!(field.starts_with("spec."), "{field}"),
        Err(Error::SecretNotFound { field, .. } | Error::SecretKeyMissing { field, .. }) => {
            assert!(field.starts_with("spec."), "{field}")
        }
        Err(Error::Metadata(what)) => panic!("metadata {what} is set"),
    }
});
