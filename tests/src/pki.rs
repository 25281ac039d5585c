//! Certificates and keys for the test control plane, as envtest makes them: a CA, a serving
//! certificate for 127.0.0.1/localhost, client certificates, and the ServiceAccount signing key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Paths of everything written by [`Pki::write`].
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub controller_manager_cert: PathBuf,
    pub controller_manager_key: PathBuf,
    /// kube-scheduler's client certificate (the test node's scheduler).
    pub scheduler_cert: PathBuf,
    pub scheduler_key: PathBuf,
    /// The test node's kubelet: `system:node:<name>` in group `system:nodes`.
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    /// RSA key pair signing ServiceAccount tokens (RS256, as AKS issues them).
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
}

impl Pki {
    /// Generates all material into `dir`.
    pub fn write(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let pki = Self {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            controller_manager_cert: dir.join("controller-manager.crt"),
            controller_manager_key: dir.join("controller-manager.key"),
            scheduler_cert: dir.join("scheduler.crt"),
            scheduler_key: dir.join("scheduler.key"),
            node_cert: dir.join("node.crt"),
            node_key: dir.join("node.key"),
            service_account_key: dir.join("sa.key"),
            service_account_pub: dir.join("sa.pub"),
        };

        let issuer = write_ca(&pki.ca_cert, &pki.ca_key)?;

        let mut serving = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default.svc".to_owned(),
            // The test node's address and the `kubernetes` Service's, which its pods use.
            crate::node::NODE_IP.to_owned(),
            crate::node::KUBERNETES_SERVICE_IP.to_owned(),
        ])?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        write_leaf(&serving, &issuer, &pki.serving_cert, &pki.serving_key)?;

        write_leaf(
            &client("pgmcp-test-admin", Some("system:masters"))?,
            &issuer,
            &pki.admin_cert,
            &pki.admin_key,
        )?;
        write_leaf(
            &client("system:kube-controller-manager", None)?,
            &issuer,
            &pki.controller_manager_cert,
            &pki.controller_manager_key,
        )?;
        write_leaf(
            &client("system:kube-scheduler", None)?,
            &issuer,
            &pki.scheduler_cert,
            &pki.scheduler_key,
        )?;
        write_leaf(
            &client(
                &format!("system:node:{}", crate::node::NODE_NAME),
                Some("system:nodes"),
            )?,
            &issuer,
            &pki.node_cert,
            &pki.node_key,
        )?;

        let sa = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
        std::fs::write(&pki.service_account_key, sa.serialize_pem())?;
        std::fs::write(&pki.service_account_pub, sa.public_key_pem())?;
        Ok(pki)
    }
}

/// A serving certificate for a test server (PostgreSQL with `ssl=on`) and its CA.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerTls {
    /// A new CA and a certificate for `localhost` and `127.0.0.1` signed by it, in `dir`.
    pub fn write(dir: &Path, common_name: &str) -> anyhow::Result<Self> {
        Self::write_for(dir, common_name, &["localhost", "127.0.0.1"])
    }

    /// [`ServerTls::write`] for other names and addresses (a server the test node's pods or
    /// the apiserver call on the node's address).
    pub fn write_for(dir: &Path, common_name: &str, names: &[&str]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let tls = Self {
            ca_cert: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        let issuer = write_ca(&tls.ca_cert, &dir.join("ca.key"))?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        write_leaf(&params, &issuer, &tls.cert, &tls.key)?;
        Ok(tls)
    }
}

/// A self-signed CA, written to `cert_path`/`key_path`, ready to sign.
fn write_ca(cert_path: &Path, key_path: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pgmcp-test-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    std::fs::write(cert_path, ca_cert.pem())?;
    std::fs::write(key_path, ca_key.serialize_pem())?;
    Ok(Issuer::new(ca_params, ca_key))
}

fn client(common_name: &str, organization: Option<&str>) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

fn write_leaf(
    params: &CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<()> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    std::fs::write(cert_path, cert.pem())?;
    std::fs::write(key_path, key.serialize_pem())?;
    Ok(())
}
