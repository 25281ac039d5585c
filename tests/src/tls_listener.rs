//! HTTPS for the fakes (Entra, ARM, Graph): a server on loopback (or on a test node's address)
//! with a certificate from a test CA of its own, whose TLS handshakes run on their own tasks, so
//! one slow or failing client does not hold up the others.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A rustls acceptor (aws-lc-rs) for a PEM certificate chain and key.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// TLS connections for `axum::serve`: handshakes run on their own tasks, so one slow or failing
/// client (an untrusting one hangs up mid-handshake) does not hold up the others.
pub(crate) struct TlsListener {
    local: std::net::SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
}

impl TlsListener {
    pub(crate) fn spawn(tcp: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> Self {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok((stream, peer)) = tcp.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    if let Ok(Ok(tls)) = handshake.await {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        Self { local, ready }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop ended: nothing will ever come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A fake's HTTPS server: a free loopback port, a test CA, a task serving an axum router. It
/// stops when dropped.
pub(crate) struct HttpsServer {
    pub(crate) url: String,
    pub(crate) ca_cert: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// A bound port and its certificate, before the router (which may need the URL) exists.
pub(crate) struct Bound {
    pub(crate) url: String,
    tcp: tokio::net::TcpListener,
    tls: crate::pki::ServerTls,
    dir: tempfile::TempDir,
}

impl HttpsServer {
    /// Binds a free port and writes a CA and a certificate for it (`name` names both). The port
    /// is on loopback, or, in a node's namespaces ([`crate::node::inside`]), on the node's
    /// address, where pods reach it as they would reach Azure (and nothing leaves the
    /// namespace).
    pub(crate) async fn bind(name: &str) -> anyhow::Result<Bound> {
        let host = if crate::node::inside() {
            crate::node::NODE_IP
        } else {
            "127.0.0.1"
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgmcp-{name}-"))
            .tempdir()?;
        let tls = crate::pki::ServerTls::write_for(
            dir.path(),
            &format!("pgmcp-test-{name}"),
            &["localhost", "127.0.0.1", host],
        )?;
        let tcp = tokio::net::TcpListener::bind((host, 0)).await?;
        let url = format!("https://{host}:{}", tcp.local_addr()?.port());
        Ok(Bound { url, tcp, tls, dir })
    }
}

impl Bound {
    /// Serves `app` over TLS until the returned server is dropped.
    pub(crate) fn serve(self, app: axum::Router) -> anyhow::Result<HttpsServer> {
        let listener = TlsListener::spawn(self.tcp, acceptor(&self.tls.cert, &self.tls.key)?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(HttpsServer {
            url: self.url,
            ca_cert: self.tls.ca_cert,
            task,
            _dir: self.dir,
        })
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
