//! TLS to PostgreSQL, with libpq's `sslmode` meanings:
//!
//! | sslmode | encrypted | certificate checked |
//! | --- | --- | --- |
//! | `disable` | no | — |
//! | `prefer` | if the server offers it | no |
//! | `require` | yes | no |
//! | `verify-full` | yes | chain to a trusted root and the host name |
//!
//! Trusted roots are the Mozilla set (webpki-roots, so no system store is needed in a minimal
//! image; Azure Database for PostgreSQL chains to it) or, when `sslRootCert` is set, only the
//! certificates in that PEM file. rustls runs on aws-lc-rs, passed explicitly so no process-wide
//! provider has to be installed.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The `sslmode` values the server understands.
pub const SSL_MODES: [&str; 4] = ["disable", "prefer", "require", "verify-full"];

/// The negotiation mode for tokio-postgres and the connector that does the TLS.
pub fn connector(
    ssl_mode: &str,
    root_cert: Option<&Path>,
) -> Result<(SslMode, MakeRustlsConnect), String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("failed to set up TLS: {e}"))?;
    let (mode, config) = match ssl_mode {
        "verify-full" => {
            let roots = roots(root_cert)?;
            (
                SslMode::Require,
                builder.with_root_certificates(roots).with_no_client_auth(),
            )
        }
        "disable" | "prefer" | "require" => {
            let mode = match ssl_mode {
                "disable" => SslMode::Disable,
                "prefer" => SslMode::Prefer,
                _ => SslMode::Require,
            };
            let config = builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth();
            (mode, config)
        }
        other => {
            return Err(format!(
                "sslMode {other} is not supported: use one of {}",
                SSL_MODES.join(", ")
            ));
        }
    };
    Ok((mode, MakeRustlsConnect::new(config)))
}

fn roots(root_cert: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("failed to read sslRootCert {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert
                    .map_err(|e| format!("failed to parse sslRootCert {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| {
                    format!(
                        "sslRootCert {} holds an unusable certificate: {e}",
                        path.display()
                    )
                })?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "sslRootCert {} holds no PEM certificate",
                    path.display()
                ));
            }
        }
    }
    Ok(roots)
}

/// `prefer` and `require`: encrypt, but (as libpq) do not check who answers. The handshake
/// signatures are still verified, so the session key belongs to the certificate presented.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_to_libpq_meanings_and_unknown_modes_are_named() {
        for mode in SSL_MODES {
            assert!(connector(mode, None).is_ok(), "{mode}");
        }
        assert_eq!(connector("disable", None).unwrap().0, SslMode::Disable);
        assert_eq!(connector("verify-full", None).unwrap().0, SslMode::Require);
        let err = connector("allow", None).err().unwrap();
        assert!(
            err.contains("sslMode allow") && err.contains("verify-full"),
            "{err}"
        );
        let err = connector("verify-full", Some(Path::new("/nonexistent/ca.crt")))
            .err()
            .unwrap();
        assert!(err.contains("sslRootCert /nonexistent/ca.crt"), "{err}");
    }
}
