//! A throwaway test PKI, made with rcgen (ECDSA P-256):
//!
//! - `ca.pem`/`ca.key`: the CA that nginx trusts for client certificates;
//! - `server.pem`/`server.key`: nginx's certificate, for `localhost` and
//!   `127.0.0.1` (DNS and IP SANs), signed by the CA;
//! - `site-a.pem`/`.key`, `site-b.pem`/`.key`: client certificates (CN = the
//!   site name) signed by the CA;
//! - `rogue.pem`/`.key`: a client certificate (CN `rogue`) signed by a
//!   different CA, `foreign-ca.pem`, which nginx must refuse.
//!
//! Key files are written with mode 0600. [`Pki::issue_client`] makes more
//! client certificates from the same CA (expired, not yet valid, rotated with
//! a new serial, …). [`Pki::load`] reads a PKI written earlier, such as the
//! committed demo PKI in `examples/certs/`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

/// The client certificate of site A (CN `site-a`, from the CA).
pub const SITE_A: &str = "site-a";
/// The client certificate of site B (CN `site-b`, from the CA).
pub const SITE_B: &str = "site-b";
/// The client certificate from the foreign CA (CN `rogue`).
pub const ROGUE: &str = "rogue";

/// Every file a PKI directory holds.
pub const FILES: &[&str] = &[
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "site-a.pem",
    "site-a.key",
    "site-b.pem",
    "site-b.key",
    "rogue.pem",
    "rogue.key",
    "foreign-ca.pem",
];

/// The organisation in the CAs' names, so nobody mistakes them for real ones.
const ORGANIZATION: &str = "replhub tests (TEST ONLY)";
const CA_NAME: &str = "replhub test CA";
const FOREIGN_CA_NAME: &str = "replhub foreign test CA";
const CA_KEY_USAGES: [KeyUsagePurpose; 3] =
    [KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// notBefore (rounded down to the second)
    pub not_before: SystemTime,
    /// notAfter (rounded down to the second)
    pub not_after: SystemTime,
}

impl Validity {
    /// From one day ago (tolerates clock skew) for 100 years.
    pub fn long_lived() -> Validity {
        const DAY: Duration = Duration::from_secs(86_400);
        let now = SystemTime::now();
        Validity { not_before: now - DAY, not_after: now + DAY * 36_525 }
    }
}

/// What [`Pki::issue_client`] makes.
#[derive(Clone, Copy, Debug)]
pub struct ClientSpec<'a> {
    /// File names: `<file_stem>.pem` and `<file_stem>.key` in the PKI directory.
    pub file_stem: &'a str,
    /// The subject's common name (the site name).
    pub cn: &'a str,
    /// The serial number (nginx logs it as upper-case hex, `$ssl_client_serial`).
    pub serial: u64,
    /// The validity window.
    pub validity: Validity,
}

/// The files of one client certificate.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, mode 0600).
    pub key: PathBuf,
}

impl ClientCert {
    /// The serial number as nginx logs it in `$ssl_client_serial` (upper-case hex).
    pub fn serial_hex(&self) -> String {
        let pem = std::fs::read(&self.cert).unwrap_or_else(|e| panic!("cannot read {}: {e}", self.cert.display()));
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
            .unwrap_or_else(|e| panic!("{} is not a PEM file: {e}", self.cert.display()));
        let cert = pem.parse_x509().unwrap_or_else(|e| panic!("{} is not a certificate: {e}", self.cert.display()));
        let raw = cert.raw_serial();
        let significant = &raw[raw.iter().position(|&b| b != 0).unwrap_or(raw.len().saturating_sub(1))..];
        significant.iter().map(|b| format!("{b:02X}")).collect()
    }
}

/// A test PKI in a directory, with the CA's key at hand to issue more certificates.
pub struct Pki {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Pki {
    /// Generates a new PKI (every certificate valid for 100 years) and writes
    /// [`FILES`] into `dir`, which is created if needed.
    pub fn generate(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let validity = Validity::long_lived();
        let (ca, ca_pem, ca_key) = make_ca(CA_NAME, 1, validity)?;
        write_file(&dir.join("ca.pem"), &ca_pem, false)?;
        write_file(&dir.join("ca.key"), &ca_key, true)?;
        let (foreign, foreign_pem, _) = make_ca(FOREIGN_CA_NAME, 1, validity)?;
        write_file(&dir.join("foreign-ca.pem"), &foreign_pem, false)?;

        let mut server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .context("invalid server SANs")?;
        server.distinguished_name = name(&[(DnType::CommonName, "localhost")]);
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        issue_leaf(dir, "server", server, 2, validity, &ca)?;

        let pki = Pki { dir: dir.to_path_buf(), ca };
        pki.issue_client(&ClientSpec { file_stem: SITE_A, cn: SITE_A, serial: 0x10, validity })?;
        pki.issue_client(&ClientSpec { file_stem: SITE_B, cn: SITE_B, serial: 0x11, validity })?;
        issue_leaf(dir, ROGUE, client_params(ROGUE), 0x12, validity, &foreign)?;
        Ok(pki)
    }

    /// Loads a PKI written by [`Pki::generate`] (all of [`FILES`] must be there).
    pub fn load(dir: &Path) -> anyhow::Result<Pki> {
        if let Some(missing) = FILES.iter().find(|f| !dir.join(f).is_file()) {
            anyhow::bail!("{} is not a test PKI directory: {missing} is missing", dir.display());
        }
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
        };
        let key = KeyPair::from_pem(&read("ca.key")?).context("ca.key is not a private key rcgen can use")?;
        let ca_pem = read("ca.pem")?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).context("ca.pem is not PEM")?;
        let cert = pem.parse_x509().context("ca.pem is not a certificate")?;
        let attr = |values: Vec<&x509_parser::x509::AttributeTypeAndValue>, what: &str| {
            values
                .first()
                .and_then(|v| v.as_str().ok())
                .map(str::to_string)
                .ok_or_else(|| anyhow!("ca.pem has no {what} in its subject"))
        };
        let cn = attr(cert.subject().iter_common_name().collect(), "common name")?;
        let org = attr(cert.subject().iter_organization().collect(), "organisation")?;
        // The issuer name in new certificates must equal the CA's subject: same
        // attributes, same order as make_ca writes them.
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&[(DnType::CommonName, &cn), (DnType::OrganizationName, &org)]);
        params.key_usages = CA_KEY_USAGES.to_vec();
        Ok(Pki { dir: dir.to_path_buf(), ca: Issuer::new(params, key) })
    }

    /// Copies the PKI files of `src` into `dst` (created if needed) and loads
    /// the copy, so that issuing certificates never writes into `src`.
    pub fn copy_from(src: &Path, dst: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dst).with_context(|| format!("cannot create {}", dst.display()))?;
        for file in FILES {
            let contents =
                std::fs::read(src.join(file)).with_context(|| format!("cannot read {}", src.join(file).display()))?;
            write_file(&dst.join(file), &contents, file.ends_with(".key"))?;
        }
        Pki::load(dst)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (trusted by nginx for clients, and by clients for nginx).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The certificate of the foreign CA, which signed `rogue`.
    pub fn foreign_ca_cert(&self) -> PathBuf {
        self.dir.join("foreign-ca.pem")
    }

    /// nginx's certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// nginx's private key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The files of client certificate `file_stem` ([`SITE_A`], [`SITE_B`],
    /// [`ROGUE`], or one made by [`Pki::issue_client`]).
    pub fn client(&self, file_stem: &str) -> ClientCert {
        ClientCert { cert: self.dir.join(format!("{file_stem}.pem")), key: self.dir.join(format!("{file_stem}.key")) }
    }

    /// Issues a client certificate from the CA, with a new key, and writes it
    /// as `<file_stem>.pem`/`.key` (replacing files of that name).
    pub fn issue_client(&self, spec: &ClientSpec) -> anyhow::Result<ClientCert> {
        issue_leaf(&self.dir, spec.file_stem, client_params(spec.cn), spec.serial, spec.validity, &self.ca)?;
        Ok(self.client(spec.file_stem))
    }
}

/// A self-signed CA: its issuer, certificate PEM and key PEM.
fn make_ca(cn: &str, serial: u64, validity: Validity) -> anyhow::Result<(Issuer<'static, KeyPair>, String, String)> {
    let key = KeyPair::generate().context("cannot generate a CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&[(DnType::CommonName, cn), (DnType::OrganizationName, ORGANIZATION)]);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = CA_KEY_USAGES.to_vec();
    params.serial_number = Some(serial_number(serial));
    set_validity(&mut params, validity);
    let cert = params.self_signed(&key).with_context(|| format!("cannot self-sign the CA {cn}"))?;
    let key_pem = key.serialize_pem();
    Ok((Issuer::new(params, key), cert.pem(), key_pem))
}

/// Parameters of a client certificate with common name `cn`.
fn client_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&[(DnType::CommonName, cn)]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// Signs a leaf certificate with a new key and writes `<stem>.pem` and `<stem>.key` into `dir`.
fn issue_leaf(
    dir: &Path,
    stem: &str,
    mut params: CertificateParams,
    serial: u64,
    validity: Validity,
    issuer: &Issuer<'_, KeyPair>,
) -> anyhow::Result<()> {
    let key = KeyPair::generate().with_context(|| format!("cannot generate a key for {stem}"))?;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial_number(serial));
    set_validity(&mut params, validity);
    let cert = params.signed_by(&key, issuer).with_context(|| format!("cannot sign the certificate {stem}"))?;
    write_file(&dir.join(format!("{stem}.pem")), cert.pem().as_bytes(), false)?;
    write_file(&dir.join(format!("{stem}.key")), key.serialize_pem().as_bytes(), true)
}

fn name(attributes: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (ty, value) in attributes {
        dn.push(ty.clone(), *value);
    }
    dn
}

fn serial_number(serial: u64) -> SerialNumber {
    SerialNumber::from_slice(&serial.to_be_bytes())
}

/// rcgen takes `time::OffsetDateTime`; it is reached from the epoch so that
/// this module needs no `time` dependency of its own.
fn set_validity(params: &mut CertificateParams, validity: Validity) {
    let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default();
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(validity.not_before);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(validity.not_after);
}

/// Writes a file, with mode 0600 if `private` (also when it already existed).
fn write_file(path: &Path, contents: impl AsRef<[u8]>, private: bool) -> anyhow::Result<()> {
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents.as_ref()))
        .with_context(|| format!("cannot write {}", path.display()))
}
