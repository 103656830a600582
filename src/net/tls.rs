//! The broker's TLS identity: the configured certificate and key, or a self-signed pair
//! generated once and kept in `<data_dir>/tls/` so clients can pin its fingerprint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// Certificate chain, key and the end-entity fingerprint.
#[derive(Debug)]
pub struct Identity {
    /// Chain, end-entity first.
    pub certs: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the end-entity certificate, lowercase hex.
    pub fingerprint: String,
    /// Where the certificate is (clients can use it as their CA file).
    pub cert_path: PathBuf,
}

/// The key of the QUIC stateless resets this broker sends, derived from its TLS private key so
/// that it survives restarts. A broker restarted after a crash then answers packets of the
/// connections its previous process had with a stateless reset that those clients accept
/// (RFC 9000 §10.3): they learn at once that the connection is gone and reconnect, instead of
/// waiting for their liveness check.
pub fn stateless_reset_key(id: &Identity) -> ring::hmac::Key {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"quiver stateless reset key v1\0");
    ctx.update(id.key.secret_der());
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ctx.finish().as_ref())
}

/// The key of this broker's connection ids, derived from its TLS private key. quinn's default
/// generator keys its ids with a random per-process key, so a restarted broker would drop an
/// old connection's packets as invalid instead of answering them with the stateless reset
/// that tells the client to reconnect; with a stable key it recognises them.
pub fn connection_id_key(id: &Identity) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"quiver connection id key v1\0");
    ctx.update(id.key.secret_der());
    let d = ctx.finish();
    let mut k = [0u8; 8];
    k.copy_from_slice(&d.as_ref()[..8]);
    u64::from_le_bytes(k)
}

/// SHA-256 of DER bytes, lowercase hex.
pub fn sha256_hex(der: &[u8]) -> String {
    quiver_protocol::text::hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// Loads the configured identity, or the generated one (creating it on first start).
pub fn load_or_generate(cfg: &Config) -> anyhow::Result<Identity> {
    let (cert_path, key_path) = match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => {
            let dir = cfg.broker.data_dir.join("tls");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !c.exists() || !k.exists() {
                generate(&dir, &c, &k, &cfg.tls.names)?;
            }
            (c, k)
        }
        _ => bail!("tls.cert and tls.key must be given together"),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert_path.display()))?;
    let Some(first) = certs.first() else {
        bail!("{} holds no certificate", cert_path.display());
    };
    let fingerprint = sha256_hex(first.as_ref());
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading private key {}", key_path.display()))?;
    Ok(Identity {
        certs,
        key,
        fingerprint,
        cert_path,
    })
}

fn generate(dir: &Path, cert: &Path, key: &Path, extra: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    names.extend(extra.iter().cloned());
    let ck = rcgen::generate_simple_self_signed(names).context("generating a certificate")?;
    write_private(key, ck.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert, ck.cert.pem()).with_context(|| format!("writing {}", cert.display()))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed certificate");
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// The certificates every cluster node's certificate must chain to: `cluster.ca`, else the
/// node's own `tls.cert` (one certificate shared by every node). `None` outside a cluster.
pub fn cluster_roots(cfg: &Config) -> anyhow::Result<Option<Arc<rustls::RootCertStore>>> {
    if !cfg.cluster.enabled() {
        return Ok(None);
    }
    let Some(path) = cfg.cluster.ca.as_ref().or(cfg.tls.cert.as_ref()) else {
        bail!("a cluster needs cluster.ca or a shared tls.cert");
    };
    // Without cluster.ca the shared certificate itself is the anchor, and only it: a
    // tls.cert file that is a full chain must not make its issuers (perhaps a public CA)
    // the cluster's roots, or anyone holding a certificate they issued would be a member.
    let only_leaf = cfg.cluster.ca.is_none();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading cluster CA {}", path.display()))?
        .take(if only_leaf { 1 } else { usize::MAX })
    {
        let cert = cert.with_context(|| format!("parsing cluster CA {}", path.display()))?;
        roots.add(cert).with_context(|| {
            format!("cluster CA {} is not a usable trust anchor", path.display())
        })?;
    }
    if roots.is_empty() {
        bail!("cluster CA {} holds no certificate", path.display());
    }
    if only_leaf {
        // A shared certificate a CA issued cannot be its own anchor: name the CA instead.
        let first = CertificateDer::pem_file_iter(path)
            .ok()
            .and_then(|mut certs| certs.next())
            .and_then(Result::ok);
        if let Some(der) = first {
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) {
                if cert.subject().as_raw() != cert.issuer().as_raw() {
                    bail!(
                        "tls.cert {} was issued by a CA ({}): set cluster.ca to that CA's \
                         certificate (without cluster.ca, the nodes' one shared self-signed \
                         certificate is the cluster's only trust anchor)",
                        path.display(),
                        cert.issuer()
                    );
                }
            }
        }
    }
    Ok(Some(Arc::new(roots)))
}

/// The certificate authorities of applications' client certificates (`auth.client_ca`).
/// Refused when one of them is also a cluster root: its certificates would be cluster members,
/// allowed everything, instead of users.
pub fn client_roots(cfg: &Config) -> anyhow::Result<Option<Arc<rustls::RootCertStore>>> {
    let Some(path) = cfg.auth.client_ca.as_ref() else {
        return Ok(None);
    };
    let cluster = cluster_roots(cfg)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading auth.client_ca {}", path.display()))?
    {
        let cert = cert.with_context(|| format!("parsing auth.client_ca {}", path.display()))?;
        roots.add(cert).with_context(|| {
            format!(
                "auth.client_ca {} is not a usable trust anchor",
                path.display()
            )
        })?;
    }
    let overlaps = cluster.as_ref().is_some_and(|c| {
        roots.roots.iter().any(|a| {
            c.roots.iter().any(|r| {
                r.subject == a.subject && r.subject_public_key_info == a.subject_public_key_info
            })
        })
    });
    if overlaps {
        bail!(
            "auth.client_ca {} holds a cluster root (cluster.ca or the shared tls.cert): \
             applications' certificates must come from another authority",
            path.display()
        );
    }
    if roots.is_empty() {
        bail!("auth.client_ca {} holds no certificate", path.display());
    }
    Ok(Some(Arc::new(roots)))
}

/// The revocation lists of applications' client certificates (`auth.client_crl`).
pub fn client_crls(
    cfg: &Config,
) -> anyhow::Result<Vec<rustls_pki_types::CertificateRevocationListDer<'static>>> {
    let Some(path) = cfg.auth.client_crl.as_ref() else {
        return Ok(Vec::new());
    };
    if cfg.auth.client_ca.is_none() {
        bail!("auth.client_crl is set without auth.client_ca: it revokes client certificates, which only auth.client_ca enables");
    }
    let crls = rustls_pki_types::CertificateRevocationListDer::pem_file_iter(path)
        .with_context(|| format!("reading auth.client_crl {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing auth.client_crl {}", path.display()))?;
    if crls.is_empty() {
        bail!(
            "auth.client_crl {} holds no revocation list (PEM \"X509 CRL\")",
            path.display()
        );
    }
    Ok(crls)
}

/// A verifier of client certificates chaining to `roots`, refusing those `crls` revoke. Only
/// the end entity is checked against the lists, and a certificate whose issuer has no list
/// passes (cluster nodes' certificates have none).
fn client_verifier(
    roots: Arc<rustls::RootCertStore>,
    crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
    allow_none: bool,
) -> anyhow::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider);
    if !crls.is_empty() {
        builder = builder
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    if allow_none {
        builder = builder.allow_unauthenticated();
    }
    builder
        .build()
        .context("building the client-certificate verifier")
}

/// Who a presented client certificate says the peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCert {
    /// No certificate, or one that is neither a cluster node's nor an application's.
    None,
    /// A certificate of the cluster's roots: a cluster node.
    Member,
    /// A certificate from `auth.client_ca`: the user its common name names.
    User(String),
}

/// Sorts presented client certificates into cluster nodes and applications' users.
#[derive(Default)]
pub struct PeerCheck {
    cluster: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

impl PeerCheck {
    /// The checks for `cfg`'s cluster roots and `auth.client_ca` (with `auth.client_crl`).
    pub fn new(cfg: &Config) -> anyhow::Result<PeerCheck> {
        let crls = client_crls(cfg)?;
        Ok(PeerCheck {
            cluster: cluster_roots(cfg)?
                .map(|r| client_verifier(r, Vec::new(), false))
                .transpose()?,
            clients: client_roots(cfg)?
                .map(|r| client_verifier(r, crls, false))
                .transpose()?,
        })
    }

    /// What the certificate chain a connection presented (the TLS handshake already checked
    /// that it chains to one of the two sets of roots) makes the peer.
    pub fn classify(&self, chain: &[CertificateDer<'static>]) -> PeerCert {
        let Some((leaf, rest)) = chain.split_first() else {
            return PeerCert::None;
        };
        let now = rustls::pki_types::UnixTime::now();
        let chains = |v: &Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>| {
            v.as_ref()
                .is_some_and(|v| v.verify_client_cert(leaf, rest, now).is_ok())
        };
        // Applications' authorities first: a certificate one of them issued is a user's even
        // if its chain also reaches a cluster root (an application CA under the cluster's
        // CA), never a member's.
        if chains(&self.clients) {
            return common_name(leaf).map_or(PeerCert::None, PeerCert::User);
        }
        if chains(&self.cluster) {
            return PeerCert::Member;
        }
        PeerCert::None
    }
}

/// The subject's common name of a DER certificate.
fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

/// The admin listener's HTTPS configuration (`admin.tls`): the broker's own certificate,
/// TLS 1.3, HTTP/1.1.
pub fn https_config(id: &Identity) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .context("certificate and key do not match")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// The QUIC server configuration: TLS 1.3 only, ALPN `quiver/1`, no 0-RTT, stream limits.
/// Clients may present a certificate when the node is in a cluster or `auth.client_ca` is
/// set: one that chains to the cluster's roots marks a cluster member's connection, one from
/// `auth.client_ca` logs the connection in as its user ([`PeerCheck`]). Clients that present
/// none are served as before.
pub fn server_config(id: &Identity, cfg: &Config) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut roots = rustls::RootCertStore::empty();
    for store in [cluster_roots(cfg)?, client_roots(cfg)?]
        .into_iter()
        .flatten()
    {
        roots.roots.extend(store.roots.iter().cloned());
    }
    let builder = if roots.is_empty() {
        builder.with_no_client_auth()
    } else {
        builder.with_client_cert_verifier(client_verifier(
            Arc::new(roots),
            client_crls(cfg)?,
            true,
        )?)
    };
    let mut tls = builder
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .context("certificate and key do not match")?;
    tls.alpn_protocols = vec![quiver_protocol::ALPN.to_vec()];
    tls.max_early_data_size = 0; // 0-RTT off: requests are not replay-safe
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = super::transport_config();
    let streams = quinn::VarInt::from_u32(cfg.broker.max_streams_per_connection);
    transport
        .max_concurrent_bidi_streams(streams)
        .max_concurrent_uni_streams(streams);
    server.transport_config(Arc::new(transport));
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_list_needs_its_authorities_and_must_parse() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        assert!(client_crls(&cfg).unwrap().is_empty());
        let crl = dir.path().join("apps.crl.pem");
        std::fs::write(&crl, "not a list\n").unwrap();
        cfg.auth.client_crl = Some(crl.clone());
        let e = format!("{:#}", client_crls(&cfg).unwrap_err());
        assert!(e.contains("without auth.client_ca"), "{e}");
        cfg.auth.client_ca = Some(dir.path().join("ca.pem"));
        let e = format!("{:#}", client_crls(&cfg).unwrap_err());
        assert!(e.contains("holds no revocation list"), "{e}");
        assert!(e.contains("apps.crl.pem"), "{e}");
    }

    /// Without cluster.ca only the shared certificate itself is a cluster root (not the
    /// issuers a full-chain file carries), and it may not also be an application CA.
    #[test]
    fn cluster_roots_are_the_leaf_and_stay_apart_from_application_cas() {
        let dir = tempfile::tempdir().unwrap();
        let pem = |name: &str| {
            let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            ck.cert.pem()
        };
        let chain = dir.path().join("fullchain.pem");
        std::fs::write(&chain, pem("node") + &pem("some-public-ca")).unwrap();
        let mut cfg = Config::default();
        cfg.cluster.cluster_id = Some("c1".into());
        cfg.tls.cert = Some(chain.clone());
        assert_eq!(cluster_roots(&cfg).unwrap().unwrap().roots.len(), 1);
        cfg.auth.client_ca = Some(chain);
        let e = format!("{:#}", client_roots(&cfg).unwrap_err());
        assert!(e.contains("holds a cluster root"), "{e}");
        let apps = dir.path().join("apps-ca.pem");
        std::fs::write(&apps, pem("apps")).unwrap();
        cfg.auth.client_ca = Some(apps);
        assert_eq!(client_roots(&cfg).unwrap().unwrap().roots.len(), 1);

        // A shared certificate a CA issued needs cluster.ca: it cannot anchor itself.
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "internal-ca");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut node = rcgen::CertificateParams::new(vec!["node1".to_string()]).unwrap();
        node.distinguished_name
            .push(rcgen::DnType::CommonName, "node1");
        let node_cert = node
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        let issued = dir.path().join("issued.pem");
        std::fs::write(&issued, node_cert.pem() + &ca_cert.pem()).unwrap();
        cfg.tls.cert = Some(issued);
        cfg.auth.client_ca = None;
        let e = format!("{:#}", cluster_roots(&cfg).unwrap_err());
        assert!(e.contains("set cluster.ca"), "{e}");
    }
}
