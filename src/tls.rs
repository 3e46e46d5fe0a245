//! rustls client configurations (ring provider) for both sides: the
//! Webdis client's mutual TLS and the local Redis's `rediss://`.

use std::sync::Arc;

use crate::config::tls_files::ClientTls;

/// A client config trusting exactly `material.roots` (when any) and
/// presenting its certificate (when one is set).
pub fn client_config(material: ClientTls) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for root in material.roots {
        roots.add(root)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    match material.key {
        Some(key) => builder.with_client_auth_cert(material.chain, key),
        None => Ok(builder.with_no_client_auth()),
    }
}
