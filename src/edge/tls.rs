//! TLS for the `tls_listen` and `wss_listen` listeners: rustls with the ring provider.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use tokio_rustls::rustls::{self, pki_types::CertificateDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key")]
    NoKey { path: String },
    #[error("certificate and key do not form a usable TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Builds an acceptor from a PEM certificate chain and a PEM private key.
pub fn acceptor(cert_path: &str, key_path: &str) -> Result<TlsAcceptor, TlsError> {
    let open = |path: &str| {
        File::open(path)
            .map(BufReader::new)
            .map_err(|source| TlsError::Read {
                path: path.to_string(),
                source,
            })
    };
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut open(cert_path)?)
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: cert_path.to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_string(),
        });
    }
    let key = rustls_pemfile::private_key(&mut open(key_path)?)
        .map_err(|source| TlsError::Read {
            path: key_path.to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: key_path.to_string(),
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
