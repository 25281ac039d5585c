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
//!
//! TLS starts as PostgreSQL's protocol says: an SSLRequest on the new TCP connection, a one-byte
//! answer, then the handshake. SCRAM binds to the TLS session through the server certificate
//! (`tls-server-end-point`, [`channel_binding`]).
//!
//! The same settings serve the operator's tokio-postgres connections (feature `tokio-postgres`),
//! so both binaries read `sslmode` alike.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use x509_cert::der::Decode as _;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::oid::db::rfc5912;

use crate::ConnectError;
use crate::stream::Stream;

/// The `sslmode` values understood.
pub const SSL_MODES: [&str; 4] = ["disable", "prefer", "require", "verify-full"];

/// libpq's `sslmode`, as far as pgmcp supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// How connections negotiate TLS: the mode, and the rustls settings that check (or, below
/// `verify-full`, only encrypt) the server's certificate. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    mode: SslMode,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("mode", &self.mode).finish()
    }
}

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslMode {mode} is not supported: use one of {}", SSL_MODES.join(", "))]
    UnknownMode { mode: String },
    #[error("failed to set up TLS: {0}")]
    Setup(rustls::Error),
    #[error("failed to read sslRootCert {}: {error}", path.display())]
    ReadRoots {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("failed to parse sslRootCert {}: {error}", path.display())]
    ParseRoots {
        path: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    #[error("sslRootCert {} holds an unusable certificate: {error}", path.display())]
    UnusableRoot { path: PathBuf, error: rustls::Error },
    #[error("sslRootCert {} holds no PEM certificate", path.display())]
    NoRoots { path: PathBuf },
}

impl Tls {
    /// The settings for `ssl_mode` (one of [`SSL_MODES`]); `root_cert` replaces the Mozilla
    /// roots for `verify-full`.
    pub fn new(ssl_mode: &str, root_cert: Option<&Path>) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?;
        let (mode, config) = match ssl_mode {
            "verify-full" => {
                let roots = roots(root_cert)?;
                (
                    SslMode::VerifyFull,
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
                return Err(TlsError::UnknownMode {
                    mode: other.to_owned(),
                });
            }
        };
        Ok(Tls {
            mode,
            config: Arc::new(config),
        })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The negotiation mode and connector for a tokio-postgres connection with these settings.
    #[cfg(feature = "tokio-postgres")]
    pub fn tokio_postgres(
        &self,
    ) -> (
        tokio_postgres::config::SslMode,
        tokio_postgres_rustls::MakeRustlsConnect,
    ) {
        use tokio_postgres::config::SslMode as Mode;
        let mode = match self.mode {
            SslMode::Disable => Mode::Disable,
            SslMode::Prefer => Mode::Prefer,
            // The certificate check of verify-full is in the rustls settings.
            SslMode::Require | SslMode::VerifyFull => Mode::Require,
        };
        let connect = tokio_postgres_rustls::MakeRustlsConnect::new((*self.config).clone());
        (mode, connect)
    }
}

impl Tls {
    /// TLS on a new connection as the mode says. The plain socket for `disable`, and for
    /// `prefer` when the server declines.
    pub(crate) async fn negotiate(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> Result<Stream, ConnectError> {
        match self.mode {
            SslMode::Disable => Ok(Stream::Plain(tcp)),
            SslMode::Prefer => self.request(tcp, host, false).await,
            SslMode::Require | SslMode::VerifyFull => self.request(tcp, host, true).await,
        }
    }

    /// TLS whatever the mode: the cancel connection of an encrypted session.
    pub(crate) async fn encrypt(&self, tcp: TcpStream, host: &str) -> Result<Stream, ConnectError> {
        self.request(tcp, host, true).await
    }

    /// SSLRequest, then the handshake if the server agrees ('S'). Only the one byte of the
    /// answer is read before the handshake: nothing sent in the clear can pass for encrypted.
    async fn request(
        &self,
        mut tcp: TcpStream,
        host: &str,
        required: bool,
    ) -> Result<Stream, ConnectError> {
        let failed = |error| ConnectError::Tls {
            host: host.to_owned(),
            error,
        };
        let mut request = BytesMut::with_capacity(8);
        frontend::ssl_request(&mut request);
        tcp.write_all(&request).await.map_err(failed)?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.map_err(failed)?;
        match answer {
            [b'S'] => {}
            _ if required => {
                return Err(ConnectError::TlsRefused {
                    host: host.to_owned(),
                    mode: self.mode,
                });
            }
            _ => return Ok(Stream::Plain(tcp)),
        }
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| failed(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(failed)?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// The `tls-server-end-point` channel binding data of an encrypted stream (RFC 5929 §4.1): the
/// server certificate hashed with the hash function of its signature, SHA-256 when that is
/// MD5 or SHA-1. `None` unencrypted, or when the signature names no hash (Ed25519,
/// RSASSA-PSS): SCRAM then goes without binding.
pub(crate) fn channel_binding(stream: &Stream) -> Option<Vec<u8>> {
    let Stream::Tls(tls) = stream else {
        return None;
    };
    let certificate = tls.get_ref().1.peer_certificates()?.first()?;
    end_point_hash(certificate.as_ref())
}

/// ecdsa-with-SHA1 (RFC 5758 names only the SHA-2 ones).
const ECDSA_WITH_SHA_1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.1");

fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    let certificate = x509_cert::Certificate::from_der(der).ok()?;
    let algorithm = certificate.signature_algorithm.oid;
    let sha256 = [
        rfc5912::MD_5_WITH_RSA_ENCRYPTION,
        rfc5912::SHA_1_WITH_RSA_ENCRYPTION,
        rfc5912::SHA_256_WITH_RSA_ENCRYPTION,
        rfc5912::DSA_WITH_SHA_1,
        rfc5912::DSA_WITH_SHA_256,
        ECDSA_WITH_SHA_1,
        rfc5912::ECDSA_WITH_SHA_256,
    ];
    let sha224 = [
        rfc5912::SHA_224_WITH_RSA_ENCRYPTION,
        rfc5912::DSA_WITH_SHA_224,
        rfc5912::ECDSA_WITH_SHA_224,
    ];
    let sha384 = [
        rfc5912::SHA_384_WITH_RSA_ENCRYPTION,
        rfc5912::ECDSA_WITH_SHA_384,
    ];
    let sha512 = [
        rfc5912::SHA_512_WITH_RSA_ENCRYPTION,
        rfc5912::ECDSA_WITH_SHA_512,
    ];
    if sha256.contains(&algorithm) {
        Some(sha2::Sha256::digest(der).to_vec())
    } else if sha224.contains(&algorithm) {
        Some(sha2::Sha224::digest(der).to_vec())
    } else if sha384.contains(&algorithm) {
        Some(sha2::Sha384::digest(der).to_vec())
    } else if sha512.contains(&algorithm) {
        Some(sha2::Sha512::digest(der).to_vec())
    } else {
        None
    }
}

fn roots(root_cert: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|error| TlsError::ReadRoots {
                path: path.to_owned(),
                error,
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|error| TlsError::ParseRoots {
                    path: path.to_owned(),
                    error,
                })?;
                roots.add(cert).map_err(|error| TlsError::UnusableRoot {
                    path: path.to_owned(),
                    error,
                })?;
            }
            if roots.is_empty() {
                return Err(TlsError::NoRoots {
                    path: path.to_owned(),
                });
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
            let tls = Tls::new(mode, None).unwrap();
            assert_eq!(tls.mode().to_string(), mode);
        }
        let err = Tls::new("allow", None).unwrap_err().to_string();
        assert!(
            err.contains("sslMode allow") && err.contains("verify-full"),
            "{err}"
        );
        let err = Tls::new("verify-full", Some(Path::new("/nonexistent/ca.crt")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslRootCert /nonexistent/ca.crt"), "{err}");
    }

    /// A certificate signed by a new CA with `algorithm`.
    fn signed_with(algorithm: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let ca_key = rcgen::KeyPair::generate_for(algorithm).unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["db.example".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn the_end_point_hash_follows_the_signature_hash() {
        type Hash = fn(&[u8]) -> Vec<u8>;
        let cases: [(&rcgen::SignatureAlgorithm, Hash); 3] = [
            (&rcgen::PKCS_ECDSA_P256_SHA256, |der| {
                sha2::Sha256::digest(der).to_vec()
            }),
            (&rcgen::PKCS_ECDSA_P384_SHA384, |der| {
                sha2::Sha384::digest(der).to_vec()
            }),
            (&rcgen::PKCS_RSA_SHA512, |der| {
                sha2::Sha512::digest(der).to_vec()
            }),
        ];
        for (algorithm, hash) in cases {
            let der = signed_with(algorithm);
            assert_eq!(end_point_hash(&der), Some(hash(&der)), "{algorithm:?}");
        }
        // Ed25519 names no hash: no binding rather than a made-up one.
        assert_eq!(end_point_hash(&signed_with(&rcgen::PKCS_ED25519)), None);
        assert_eq!(end_point_hash(b"not a certificate"), None);
    }

    #[cfg(feature = "tokio-postgres")]
    #[test]
    fn tokio_postgres_gets_the_same_modes() {
        use tokio_postgres::config::SslMode as Mode;
        for (mode, expected) in [
            ("disable", Mode::Disable),
            ("prefer", Mode::Prefer),
            ("require", Mode::Require),
            ("verify-full", Mode::Require),
        ] {
            assert_eq!(Tls::new(mode, None).unwrap().tokio_postgres().0, expected);
        }
    }
}
