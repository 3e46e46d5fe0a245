//! Reading and checking PEM files: CA bundles, client certificates and keys.
//!
//! `check` and `run` load a link's files through [`load_client_tls`]; so does
//! the Webdis client whenever it (re)builds a connection pool, e.g. after a
//! certificate rotation. One loader means the files `check` accepted are the
//! files the client can use.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How far ahead an expiring client certificate earns a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// The paths of a link's TLS files (absolute once validated).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsPaths {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsPaths {
    /// Every file named, for the certificate watcher.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        [&self.ca, &self.cert, &self.key].into_iter().flatten().map(PathBuf::as_path)
    }
}

/// Loaded TLS material for a client.
pub struct ClientTls {
    /// Trust anchors for the server certificate; empty means "use no custom CA".
    pub roots: Vec<CertificateDer<'static>>,
    /// The client certificate chain, leaf first (empty when no client certificate is used).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Option<PrivateKeyDer<'static>>,
    /// notAfter of the client certificate, if there is one.
    pub not_after: Option<SystemTime>,
    /// Serial number of the client certificate, hex, for logs.
    pub serial: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("not_after", &self.not_after)
            .field("serial", &self.serial)
            .finish()
    }
}

/// Which file of a TLS set a problem is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFile {
    Ca,
    Cert,
    Key,
}

impl TlsFile {
    /// The config key naming this file (`ca`, `cert`, `key`).
    pub fn key(self) -> &'static str {
        match self {
            TlsFile::Ca => "ca",
            TlsFile::Cert => "cert",
            TlsFile::Key => "key",
        }
    }
}

/// A problem with one TLS file, or warnings about an otherwise usable set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsProblem {
    pub file: TlsFile,
    pub message: String,
}

/// Loads and checks a TLS set. Errors make the set unusable; warnings
/// (expiring soon, key readable by others) do not.
pub fn load_client_tls(paths: &TlsPaths, now: SystemTime) -> Result<(ClientTls, Vec<TlsProblem>), Vec<TlsProblem>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();

    let roots = match &paths.ca {
        Some(path) => read_certs(path, TlsFile::Ca).unwrap_or_else(|e| {
            errors.push(e);
            Vec::new()
        }),
        None => Vec::new(),
    };
    for (i, root) in roots.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(root) {
            errors.push(problem(
                TlsFile::Ca,
                &paths.ca,
                format!("certificate #{} does not parse as X.509: {e}", i + 1),
            ));
        }
    }

    let chain = match &paths.cert {
        Some(path) => read_certs(path, TlsFile::Cert).unwrap_or_else(|e| {
            errors.push(e);
            Vec::new()
        }),
        None => Vec::new(),
    };
    let key = match &paths.key {
        Some(path) => match read_key(path) {
            Ok(key) => {
                if let Some(w) = permission_warning(path) {
                    warnings.push(w);
                }
                Some(key)
            }
            Err(e) => {
                errors.push(e);
                None
            }
        },
        None => None,
    };

    let mut not_after = None;
    let mut serial = None;
    if let Some(leaf) = chain.first() {
        match x509_parser::parse_x509_certificate(leaf) {
            Ok((_, cert)) => {
                serial = Some(cert.raw_serial_as_string().replace(':', ""));
                let validity = cert.validity();
                let start = to_system_time(validity.not_before.timestamp());
                let end = to_system_time(validity.not_after.timestamp());
                not_after = Some(end);
                if now < start {
                    errors.push(problem(
                        TlsFile::Cert,
                        &paths.cert,
                        format!("the client certificate is not valid yet (notBefore {}); check the clock or the certificate", validity.not_before),
                    ));
                } else if now > end {
                    errors.push(problem(
                        TlsFile::Cert,
                        &paths.cert,
                        format!(
                            "the client certificate expired on {}; install a renewed certificate",
                            validity.not_after
                        ),
                    ));
                } else if end.duration_since(now).unwrap_or_default() < EXPIRY_WARNING {
                    let days = end.duration_since(now).unwrap_or_default().as_secs() / 86_400;
                    warnings.push(problem(
                        TlsFile::Cert,
                        &paths.cert,
                        format!(
                            "the client certificate expires in {days} days ({}); renew it soon",
                            validity.not_after
                        ),
                    ));
                }
                if let Some(key) = &key
                    && !key_matches(key, cert.public_key().raw)
                {
                    errors.push(problem(
                        TlsFile::Key,
                        &paths.key,
                        format!(
                            "the private key does not match the certificate {}; use the key the certificate was issued for",
                            paths.cert.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
                        ),
                    ));
                }
            }
            Err(e) => errors.push(problem(
                TlsFile::Cert,
                &paths.cert,
                format!("the certificate does not parse as X.509: {e}"),
            )),
        }
    }
    if errors.is_empty() { Ok((ClientTls { roots, chain, key, not_after, serial }, warnings)) } else { Err(errors) }
}

fn problem(file: TlsFile, path: &Option<PathBuf>, message: String) -> TlsProblem {
    let shown = path.as_deref().map(|p| format!("{}: ", p.display())).unwrap_or_default();
    TlsProblem { file, message: format!("{shown}{message}") }
}

const MAX_PEM_BYTES: u64 = 1 << 20;

fn read_file(path: &Path, file: TlsFile) -> Result<Vec<u8>, TlsProblem> {
    use std::io::Read;
    let read = std::fs::File::open(path).and_then(|f| {
        let mut bytes = Vec::new();
        f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes)?;
        Ok(bytes)
    });
    if let Ok(bytes) = &read
        && bytes.len() as u64 > MAX_PEM_BYTES
    {
        return Err(TlsProblem {
            file,
            message: format!("{}: the file is larger than 1 MiB; is this a PEM file?", path.display()),
        });
    }
    read.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "the file does not exist".to_string(),
            std::io::ErrorKind::PermissionDenied => "the file is not readable (permission denied)".to_string(),
            std::io::ErrorKind::IsADirectory => "this is a directory, not a file".to_string(),
            _ => format!("the file cannot be read: {e}"),
        };
        TlsProblem { file, message: format!("{}: {why}", path.display()) }
    })
}

fn read_certs(path: &Path, file: TlsFile) -> Result<Vec<CertificateDer<'static>>, TlsProblem> {
    let bytes = read_file(path, file)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(TlsProblem {
            file,
            message: format!("{}: no PEM certificate (\"-----BEGIN CERTIFICATE-----\") in the file", path.display()),
        }),
        Err(e) => Err(TlsProblem { file, message: format!("{}: the PEM data does not parse: {e}", path.display()) }),
    }
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsProblem> {
    let bytes = read_file(path, TlsFile::Key)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsProblem {
        file: TlsFile::Key,
        message: format!("{}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1) in the file: {e}", path.display()),
    })
}

fn key_matches(key: &PrivateKeyDer<'static>, cert_spki: &[u8]) -> bool {
    match rustls::crypto::ring::sign::any_supported_type(key) {
        Ok(signing_key) => signing_key.public_key().is_some_and(|spki| spki.as_ref() == cert_spki),
        Err(_) => false,
    }
}

#[cfg(unix)]
fn permission_warning(path: &Path) -> Option<TlsProblem> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| TlsProblem {
        file: TlsFile::Key,
        message: format!(
            "{}: the private key is readable by group or others (mode {:04o}); run `chmod 600` on it",
            path.display(),
            mode & 0o7777
        ),
    })
}

#[cfg(not(unix))]
fn permission_warning(_path: &Path) -> Option<TlsProblem> {
    None
}

fn to_system_time(timestamp: i64) -> SystemTime {
    if timestamp >= 0 {
        UNIX_EPOCH + Duration::from_secs(timestamp as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(timestamp.unsigned_abs())
    }
}
