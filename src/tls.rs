//! Optional TLS for both listeners (`--tls-cert`, `--tls-key`): rustls with
//! the ring provider. tonic terminates TLS on the gRPC listener itself; the
//! MCP HTTP listener runs [`Tls::accept`] in each connection's own task.
//!
//! Handshakes have a time limit, so a client that connects and says nothing
//! holds up no one else.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate chain and its private key, checked to belong together.
#[derive(Clone)]
pub struct Tls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    http: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads PEM files: `cert` holds the chain (leaf first), `key` its private key.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let cert_pem = std::fs::read(cert)
            .with_context(|| format!("--tls-cert: cannot read {}", cert.display()))?;
        let key_pem = std::fs::read(key)
            .with_context(|| format!("--tls-key: cannot read {}", key.display()))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", cert.display()))?;
        if chain.is_empty() {
            bail!(
                "--tls-cert {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                cert.display()
            );
        }
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            anyhow::anyhow!(
                "--tls-key {}: no usable PEM private key in it ({e})",
                key.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS: protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| {
                anyhow::anyhow!(
                    "--tls-cert {} / --tls-key {}: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
        // The MCP endpoint speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert_pem,
            key_pem,
            http: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The gRPC listener's TLS settings.
    pub fn grpc_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// Runs the TLS handshake of an accepted MCP HTTP connection, within
    /// [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.http.accept(tcp)).await {
            Ok(done) => done,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, a.cert.pem())?;
        std::fs::write(&key, a.signing_key.serialize_pem())?;
        assert!(Tls::load(&cert, &key).is_ok());
        std::fs::write(&key, b.signing_key.serialize_pem())?;
        let err = Tls::load(&cert, &key).expect_err("mismatch").to_string();
        assert!(err.contains("--tls-cert"), "{err}");
        std::fs::write(&cert, "not a certificate")?;
        let err = Tls::load(&cert, &key).expect_err("no cert").to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        Ok(())
    }
}
