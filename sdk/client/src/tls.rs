//! How the client verifies the broker's certificate, and the QUIC transport settings.

use std::path::PathBuf;
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use quiver_protocol::text::hex;

use crate::error::ClientError;

/// How the broker's TLS certificate is verified. TLS 1.3 is always used and 0-RTT is never
/// enabled.
#[derive(Clone, PartialEq, Eq)]
pub enum Tls {
    /// Trust the certificate(s) in this file (PEM, possibly several, or one DER certificate).
    /// A self-signed broker certificate can be its own CA: point this at the broker's
    /// `cert.pem`. The server name of [`crate::ClientConfig`] must match the certificate.
    CaFile(PathBuf),
    /// Trust this DER-encoded CA (or self-signed broker) certificate.
    CaDer(Vec<u8>),
    /// Pin the SHA-256 fingerprint of the broker's end-entity certificate (DER). The
    /// certificate chain and name are not checked, but the handshake signatures are, so the
    /// broker must hold the private key of the pinned certificate. See
    /// [`Tls::fingerprint_from_hex`] and [`fingerprint_hex`].
    Fingerprint([u8; 32]),
    /// Accept any certificate. **Local development only**: it gives no protection against an
    /// active attacker. Never the default.
    Insecure,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tls::CaFile(p) => f.debug_tuple("CaFile").field(p).finish(),
            Tls::CaDer(d) => write!(f, "CaDer({} bytes)", d.len()),
            Tls::Fingerprint(fp) => write!(f, "Fingerprint({})", hex(fp)),
            Tls::Insecure => f.write_str("Insecure"),
        }
    }
}

impl Tls {
    /// Parses a SHA-256 fingerprint written as 64 hex digits, optionally separated by `:`
    /// (`ab:cd:...`), upper or lower case, into [`Tls::Fingerprint`].
    pub fn fingerprint_from_hex(s: &str) -> Result<Tls, ClientError> {
        let digits: Vec<u8> = s.trim().bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return Err(ClientError::Tls(format!(
                "a SHA-256 fingerprint has 64 hex digits, got {}",
                digits.len()
            )));
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]);
            let lo = hex_val(pair[1]);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out[i] = hi << 4 | lo,
                _ => {
                    return Err(ClientError::Tls(format!(
                        "fingerprint has a non-hex character near digit {}",
                        2 * i
                    )))
                }
            }
        }
        Ok(Tls::Fingerprint(out))
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// SHA-256 of a certificate's DER bytes.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The SHA-256 fingerprint of a certificate's DER bytes as 64 lowercase hex digits without
/// separators (what [`Tls::fingerprint_from_hex`] accepts).
pub fn fingerprint_hex(der: &[u8]) -> String {
    hex(&fingerprint(der))
}

/// The QUIC transport settings shared by the client and the broker (one definition, in
/// `quiver-protocol`).
pub use quiver_protocol::transport::transport_config;

/// The crypto provider used everywhere (ring).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads the certificates of a CA file: PEM (any number of certificates) or a single DER one.
fn load_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let data = std::fs::read(path)
        .map_err(|e| ClientError::Tls(format!("cannot read CA file {}: {e}", path.display())))?;
    let looks_pem = data
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .is_some_and(|i| data[i..].starts_with(b"-----BEGIN"));
    if !looks_pem {
        return Ok(vec![CertificateDer::from(data)]);
    }
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Tls(format!("cannot parse PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::Tls(format!(
            "no CERTIFICATE block in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Builds the quinn client configuration (TLS 1.3 only, ALPN `quiver/1`, no early data, the
/// shared [`transport_config`]).
pub fn quinn_client_config(tls: &Tls) -> Result<quinn::ClientConfig, ClientError> {
    quinn_client_config_with(tls, None)
}

/// A TLS client certificate and its private key (PEM files), presented to the broker: with
/// `auth.client_ca` on the broker, it logs the connection in as the user its common name
/// names (docs/SECURITY.md §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The certificate (and any intermediates), PEM.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl ClientCertificate {
    fn load(
        &self,
    ) -> Result<
        (
            Vec<CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        ClientError,
    > {
        let chain = load_ca_file(&self.cert)?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&self.key).map_err(|e| {
            ClientError::Tls(format!(
                "cannot read the client key {}: {e}",
                self.key.display()
            ))
        })?;
        Ok((chain, key))
    }
}

/// [`quinn_client_config`], presenting `certificate` when given.
pub fn quinn_client_config_with(
    tls: &Tls,
    certificate: Option<&ClientCertificate>,
) -> Result<quinn::ClientConfig, ClientError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(format!("TLS 1.3 unavailable: {e}")))?;
    let roots = |certs: Vec<CertificateDer<'static>>| -> Result<_, ClientError> {
        let mut store = rustls::RootCertStore::empty();
        for c in certs {
            store
                .add(c)
                .map_err(|e| ClientError::Tls(format!("unusable CA certificate: {e}")))?;
        }
        Ok(store)
    };
    let builder = match tls {
        Tls::CaFile(path) => builder.with_root_certificates(roots(load_ca_file(path)?)?),
        Tls::CaDer(der) => {
            builder.with_root_certificates(roots(vec![CertificateDer::from(der.clone())])?)
        }
        Tls::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: Some(*fp),
                provider,
            })),
        Tls::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: None,
                provider,
            })),
    };
    let mut cfg = match certificate {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let (chain, key) = c.load()?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                ClientError::Tls(format!(
                    "the client certificate {} and key {} do not go together: {e}",
                    c.cert.display(),
                    c.key.display()
                ))
            })?
        }
    };
    cfg.alpn_protocols = vec![quiver_protocol::ALPN.to_vec()];
    cfg.enable_early_data = false;
    let quic = QuicClientConfig::try_from(cfg)
        .map_err(|e| ClientError::Tls(format!("TLS configuration unusable for QUIC: {e}")))?;
    let mut qc = quinn::ClientConfig::new(Arc::new(quic));
    qc.transport_config(Arc::new(transport_config()));
    Ok(qc)
}

/// Checks the end-entity certificate against a SHA-256 pin (or accepts any when `pin` is
/// `None`), and always verifies the handshake signatures with the crypto provider.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(pin) if ring_eq(&fingerprint(end_entity.as_ref()), &pin) => {
                Ok(ServerCertVerified::assertion())
            }
            Some(_) => {
                tracing::warn!(
                    got = %fingerprint_hex(end_entity.as_ref()),
                    "broker certificate does not match the pinned fingerprint"
                );
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Constant-time comparison (the fingerprint is public, but it costs nothing).
fn ring_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_hex_round_trips() {
        let der = b"not really a certificate";
        let hex = fingerprint_hex(der);
        assert_eq!(hex.len(), 64);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(
            Tls::fingerprint_from_hex(&hex).unwrap(),
            Tls::Fingerprint(fingerprint(der))
        );
        // Known SHA-256 of the empty input.
        assert_eq!(
            fingerprint_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn fingerprint_parsing_accepts_colons_and_case() {
        let plain = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        let colons: String = plain
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(colons.len(), 64 + 31);
        let a = Tls::fingerprint_from_hex(plain).unwrap();
        let b = Tls::fingerprint_from_hex(&colons).unwrap();
        let c = Tls::fingerprint_from_hex(&format!(" {} ", plain.to_lowercase())).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a, Tls::Fingerprint(fingerprint(b"")));
    }

    #[test]
    fn fingerprint_parsing_rejects_bad_input() {
        for bad in [
            "",
            "abc",
            &"a".repeat(63),
            &"a".repeat(65),
            &format!("{}zz", "a".repeat(62)),
            &format!("{}é", "a".repeat(62)),
        ] {
            assert!(
                matches!(Tls::fingerprint_from_hex(bad), Err(ClientError::Tls(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn configs_build() {
        for tls in [Tls::Fingerprint([7; 32]), Tls::Insecure] {
            quinn_client_config(&tls).expect("config");
        }
        assert!(matches!(
            quinn_client_config(&Tls::CaFile("/nonexistent/cert.pem".into())),
            Err(ClientError::Tls(_))
        ));
        assert!(matches!(
            quinn_client_config(&Tls::CaDer(b"garbage".to_vec())),
            Err(ClientError::Tls(_))
        ));
        let dbg = format!("{:?}", Tls::Fingerprint([0xab; 32]));
        assert!(dbg.contains("abab"), "{dbg}");
    }
}
