//! `replhub check` (issue 2): every error of a file at once, each as
//! `FILE:LINE:COL: message` naming the link and the key, exit 1; warnings as
//! `FILE:LINE:COL: warning: message` with exit 0; `check --connect` against
//! the real stack; and `replhub schema`, `replhub --version` and the shipped
//! examples.
//!
//! The config files are fixtures in `integration/fixtures/check/`. A test
//! copies one into a fresh scratch directory whose `certs/` holds a copy of
//! the test PKI of `examples/certs/` (plus the odd files the test needs, made
//! at test time: whether a certificate has expired depends on the clock),
//! runs the real binary on it and compares every line of the output, with the
//! scratch directory written as `{dir}` and the file as `{file}`.

use std::ffi::OsStr;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use replhub::config::tree::{Node, NodeValue};

use crate::support::hub::{replhub_bin, yaml_str};
use crate::support::manifest_dir;
use crate::support::pki::{ClientSpec, Pki, ROGUE, SITE_A, SITE_B, Validity};
use crate::support::stack::{Acl, KEEP_ENV, Stack, StackOptions};
use crate::support::webdis::central_basic_auth;

const DAY: Duration = Duration::from_secs(86_400);

/// The first line of every example, so editors validate it against the schema.
const SCHEMA_HEADER: &str = "# yaml-language-server: $schema=../schemas/replhub.schema.json";

/// How long any one `replhub` command may take before the test gives up on it.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn fixtures_dir() -> PathBuf {
    manifest_dir().join("integration").join("fixtures").join("check")
}

/// A fresh directory with `certs/` holding a copy of the test PKI of
/// `examples/certs/`; removed on drop (unless `REPLHUB_KEEP_STACK` is set).
struct Scratch {
    dir: PathBuf,
    pki: Pki,
}

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("replhub-check-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let pki = Pki::copy_from(&manifest_dir().join("examples").join("certs"), &dir.join("certs"))
            .unwrap_or_else(|e| panic!("cannot copy the test PKI: {e:#}"));
        Scratch { dir, pki }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    /// Copies the fixture `name` into the directory; returns its new path.
    fn fixture(&self, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(fixtures_dir().join(name))
            .unwrap_or_else(|e| panic!("cannot read the fixture {name}: {e}"));
        self.write(name, &text)
    }

    fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path(relative);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Issues a client certificate `certs/<stem>.pem`/`.key` from the test CA.
    fn issue(&self, stem: &str, serial: u64, not_before: SystemTime, not_after: SystemTime) {
        let validity = Validity { not_before, not_after };
        self.pki
            .issue_client(&ClientSpec { file_stem: stem, cn: stem, serial, validity })
            .unwrap_or_else(|e| panic!("cannot issue {stem}: {e:#}"));
    }

    /// Runs `replhub check -c <fixture>` (copied here) with `env`.
    fn check(&self, fixture: &str, env: &[(&str, &str)]) -> Run {
        let path = self.fixture(fixture);
        let run = replhub(&[OsStr::new("check"), OsStr::new("-c"), path.as_os_str()], env);
        run.replace(&path.display().to_string(), "{file}").replace(&self.dir.display().to_string(), "{dir}")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("{KEEP_ENV} is set: keeping {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What a `replhub` command did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    fn replace(mut self, from: &str, to: &str) -> Run {
        self.stdout = self.stdout.replace(from, to);
        self.stderr = self.stderr.replace(from, to);
        self
    }

    /// Asserts the exit code and every line of stdout.
    #[track_caller]
    fn assert(&self, code: i32, expected: &[&str]) {
        let actual = self.lines();
        if actual != expected || self.code != Some(code) {
            panic!(
                "replhub exited with {:?} (expected {code}).\n--- expected stdout ---\n{}\n--- actual stdout ---\n{}\n--- stderr ---\n{}",
                self.code,
                expected.join("\n"),
                actual.join("\n"),
                self.stderr_tail()
            );
        }
    }

    /// The last lines of stderr (it has debug logs), for failure messages.
    fn stderr_tail(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Asserts that `secret` appears nowhere in the output (stdout and stderr).
    #[track_caller]
    fn assert_hides(&self, secret: &str) {
        assert!(
            !self.stdout.contains(secret) && !self.stderr.contains(secret),
            "the secret {secret:?} was printed:\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// Runs the replhub binary with `args` and `env` (and debug logging, so that
/// whatever it logs is also searched for secrets), killing it after
/// [`COMMAND_DEADLINE`].
fn replhub(args: &[&OsStr], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(replhub_bin());
    cmd.args(args)
        .env_remove("REPLHUB_CONFIG")
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        cmd.env(name, value);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", replhub_bin().display()));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for replhub") {
            break status;
        }
        if start.elapsed() > COMMAND_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("replhub {args:?} did not finish within {COMMAND_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    Run {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        elapsed,
    }
}

/// The `notAfter` or `notBefore` of a certificate file as the messages print it.
fn cert_time(path: &Path, not_after: bool) -> String {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("a PEM file");
    let cert = pem.parse_x509().expect("a certificate");
    let validity = cert.validity();
    if not_after { validity.not_after.to_string() } else { validity.not_before.to_string() }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// Valid files
// ---------------------------------------------------------------------------

#[test]
fn check_valid_file_prints_only_ok_and_exits_0() {
    let scratch = Scratch::new();
    let run = scratch.check("valid.yaml", &[("REPLHUB_TEST_PASSWORD", "valid-secret-1e4b")]);
    run.assert(0, &["{file}: ok (3 links)"]);
    run.assert_hides("valid-secret-1e4b");
}

// ---------------------------------------------------------------------------
// Structure: YAML syntax, unknown keys, types, version, duplicate keys
// ---------------------------------------------------------------------------

#[test]
fn check_yaml_syntax_error_has_its_position() {
    let scratch = Scratch::new();
    scratch
        .check("syntax.yaml", &[])
        .assert(1, &["{file}:7:10: YAML syntax error: illegal placement of ':' indicator", "{file}: 1 error"]);
}

#[test]
fn check_unknown_keys_are_errors_with_a_suggestion_for_near_misses() {
    let scratch = Scratch::new();
    scratch.check("unknown_keys.yaml", &[]).assert(
        1,
        &[
            "{file}:6:5: defaults: unknown key `remote.tsl`; allowed here: url, prefix, tls, basic_auth, db, insecure_plaintext",
            "{file}:9:5: link `sensors`: unknown key `directon` (did you mean `direction`?)",
            "{file}:13:7: link `sensors`: unknown key `local.colour`; allowed here: url, prefix, tls",
            "{file}:14:5: link `sensors`: unknown key `Remote` (did you mean `remote`?)",
            "{file}:15:18: link `sensors`: unknown key `heartbeat.intervall` (did you mean `interval`?)",
            "{file}:16:1: unknown key `bogus`; allowed here: version, admin, defaults, links, shutdown_timeout, state_dir",
            "{file}: 6 errors",
        ],
    );
}

#[test]
fn check_values_of_the_wrong_type_name_the_expected_type() {
    let scratch = Scratch::new();
    scratch.check("wrong_types.yaml", &[]).assert(
        1,
        &[
            "{file}:3:8: `admin` must be a mapping or null, got a string",
            "{file}:6:16: link `sensors`: `direction` must be a string or null, got an integer",
            "{file}:7:19: link `sensors`: `local.url` must be a string or null, got an integer",
            "{file}:11:11: link `sensors`: `remote.db` must be an integer or null, got a string",
            "{file}:12:27: link `sensors`: `remote.insecure_plaintext` must be true or false or null, got a string",
            "{file}:13:12: link `sensors`: `types` must be a list or null, got a string",
            "{file}:14:16: link `sensors`: `heartbeat` must be a mapping or null, got a string",
            "{file}:15:26: link `sensors`: `max_delete_fraction` must be a number or null, got a string",
            "{file}:16:22: link `sensors`: `resync_interval` must be a string or null, got an integer",
            "{file}:17:11: link #2: `name` must be a string, got an integer",
            "{file}:19:12: link #2: `local` must be a mapping or null, got a list",
            "{file}:20:19: `shutdown_timeout` must be a string or null, got a boolean",
            "{file}: 12 errors",
        ],
    );
}

#[test]
fn check_version_must_be_present_and_1() {
    let scratch = Scratch::new();
    scratch.check("version.yaml", &[]).assert(
        1,
        &["{file}:2:10: `version` must be 1 (this replhub reads version 1 files), got 2", "{file}: 1 error"],
    );
    scratch.check("no_version.yaml", &[]).assert(1, &["{file}:2:1: missing required key `version`", "{file}: 1 error"]);
}

#[test]
fn check_duplicate_yaml_keys_are_errors_at_the_second_one() {
    let scratch = Scratch::new();
    scratch.check("duplicate_keys.yaml", &[]).assert(
        1,
        &[
            "{file}:6:67: link `sensors`: duplicate key `local.prefix` (first set on line 6)",
            // The last value counts (as in most YAML readers), so the key no
            // longer matches the (second) certificate: reported as well.
            "{file}:12:14: link `sensors`: `remote.tls.key`: {dir}/certs/site-a.key: the private key does not match the certificate {dir}/certs/site-b.pem; use the key the certificate was issued for",
            "{file}:13:9: link `sensors`: duplicate key `remote.tls.cert` (first set on line 11)",
            "{file}:14:5: link `sensors`: duplicate key `direction` (first set on line 5)",
            "{file}:15:1: duplicate key `version` (first set on line 2)",
            "{file}: 5 errors",
        ],
    );
}

// ---------------------------------------------------------------------------
// Links: names, prefixes, overlapping namespaces
// ---------------------------------------------------------------------------

#[test]
fn check_link_names_must_be_valid_and_unique() {
    let scratch = Scratch::new();
    scratch.check("link_names.yaml", &[]).assert(
        1,
        &[
            "{file}:12:11: link `has space`: `name` \"has space\" is not valid; use 1 to 64 characters from A-Z a-z 0-9 _ . -",
            "{file}:14:11: link #3: `name` \"\" is not valid; use 1 to 64 characters from A-Z a-z 0-9 _ . -",
            "{file}:16:11: link `x123456789x123456789x123456789x123456789x123456789x123456789x1234`: `name` \"x123456789x123456789x123456789x123456789x123456789x123456789x1234\" is not valid; use 1 to 64 characters from A-Z a-z 0-9 _ . -",
            "{file}:20:11: link `sensors`: duplicate link name (first used on line 10); link names must be unique",
            "{file}:22:11: link `naïve`: `name` \"naïve\" is not valid; use 1 to 64 characters from A-Z a-z 0-9 _ . -",
            "{file}: 5 errors",
        ],
    );
}

#[test]
fn check_prefixes_must_be_present_non_empty_and_outside_the_reserved_namespace() {
    let scratch = Scratch::new();
    scratch.check("prefixes.yaml", &[]).assert(
        1,
        &[
            "{file}:11:22: link `empty`: `local.prefix` is empty; an empty prefix would replicate the whole database, so name the namespace (e.g. \"app:\")",
            "{file}:13:12: link `missing`: `local.prefix` is missing; every link replicates one namespace, e.g. prefix: \"app:\"",
            "{file}:15:22: link `reserved`: `local.prefix` \"__replhub__:mine:\" overlaps `__replhub__:`, the namespace replhub reserves for itself",
            "{file}:17:22: link `reserved-short`: `local.prefix` \"__repl\" overlaps `__replhub__:`, the namespace replhub reserves for itself",
            "{file}:20:23: link `remote-reserved`: `remote.prefix` \"__replhub__:\" overlaps `__replhub__:`, the namespace replhub reserves for itself",
            "{file}:23:23: link `remote-empty`: `remote.prefix` is empty; an empty prefix would replicate the whole database, so name the namespace (e.g. \"app:\")",
            "{file}: 6 errors",
        ],
    );
}

#[test]
fn check_namespaces_overlap_only_on_the_same_server_and_database() {
    let scratch = Scratch::new();
    let overlaps = "namespaces of links on one database must not overlap";
    let local = format!(
        "{{file}}:15:55: link `orders-eu`: `local.prefix` \"orders:eu:\" overlaps link `orders`'s \"orders:\" on the same Redis (127.0.0.1:6379 db 0); {overlaps}"
    );
    let remote = |pos: &str, link: &str, prefix: &str, other: &str| {
        format!(
            "{{file}}:{pos}: link `{link}`: `remote.prefix` \"{prefix}\" overlaps link `{other}`'s \"shared:\" on the same Redis (https://localhost:18443/ db 0); {overlaps}"
        )
    };
    let expected = [
        local,
        remote("29:23", "central-again", "shared:", "central"),
        // No `remote.prefix` of its own: it is the local prefix, and the
        // error is at the link.
        remote("30:5", "central-implicit", "shared:sub:", "central"),
        remote("30:5", "central-implicit", "shared:sub:", "central-again"),
        "{file}: 4 errors".to_string(),
    ];
    scratch.check("overlap.yaml", &[]).assert(1, &expected.iter().map(String::as_str).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------
// URLs, plain HTTP, environment variables
// ---------------------------------------------------------------------------

#[test]
fn check_urls_and_schemes_are_checked_on_both_sides() {
    let scratch = Scratch::new();
    let local = "expected redis://[user[:password]@]host:port[/db] or rediss://…";
    let remote = "expected a base URL like https://central.example.org:8443/";
    let expected = [
        format!("{{file}}:12:19: link `local-not-a-url`: `local.url`: not a valid URL (relative URL without a base); {local}"),
        format!("{{file}}:14:19: link `local-scheme`: `local.url`: the scheme `http` is not supported; {local}"),
        format!("{{file}}:16:19: link `local-no-port`: `local.url`: the URL has no port; {local}"),
        format!("{{file}}:18:19: link `local-db`: `local.url`: the database \"/zero\" is not a number; {local}"),
        format!("{{file}}:20:19: link `local-no-host`: `local.url`: not a valid URL (empty host); {local}"),
        format!("{{file}}:23:20: link `remote-scheme`: `remote.url`: the scheme `ftp` is not supported; {remote}"),
        format!(
            "{{file}}:26:20: link `remote-not-a-url`: `remote.url`: the scheme `central.example.org` is not supported; {remote}"
        ),
        format!(
            "{{file}}:29:20: link `remote-relative`: `remote.url`: not a valid URL (relative URL without a base); {remote}"
        ),
        "{file}:32:20: link `remote-credentials`: `remote.url`: credentials do not belong in the URL; use `remote.basic_auth`".to_string(),
        format!("{{file}}:35:20: link `remote-query`: `remote.url`: query strings and fragments are not supported; {remote}"),
        "{file}:38:20: link `remote-http`: `remote.url` is http:// (no TLS); use https://, or set `remote.insecure_plaintext: true` (tests on loopback only)".to_string(),
        "{file}:40:12: link `local-missing-url`: `local.url` is missing; e.g. url: \"redis://127.0.0.1:6379/0\"".to_string(),
        "{file}: 12 errors".to_string(),
    ];
    let run = scratch.check("urls.yaml", &[]);
    run.assert(1, &expected.iter().map(String::as_str).collect::<Vec<_>>());
    run.assert_hides(":pw@");
}

#[test]
fn check_http_remote_is_accepted_with_insecure_plaintext_and_a_warning() {
    let scratch = Scratch::new();
    let plain = "the remote is plain HTTP (`insecure_plaintext: true`): traffic is neither encrypted nor authenticated";
    let expected = [
        format!("{{file}}:9:27: warning: link `plain`: {plain}"),
        format!("{{file}}:15:27: warning: link `plain-with-tls`: {plain}"),
        "{file}:16:12: warning: link `plain-with-tls`: `remote.tls` is ignored for an http:// remote".to_string(),
        "{file}: ok (2 links)".to_string(),
    ];
    scratch.check("plaintext.yaml", &[]).assert(0, &expected.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn check_environment_variables_are_expanded_and_unset_ones_named_at_their_line() {
    let scratch = Scratch::new();
    let export = "export it before starting replhub";
    let expected = [
        format!("{{file}}:9:45: defaults: `remote.basic_auth.password`: environment variable `REPLHUB_TEST_UNSET_DEFAULT` is not set; {export}"),
        format!("{{file}}:15:47: link `unset-password`: `remote.basic_auth.password`: environment variable `REPLHUB_TEST_UNSET_PASSWORD` is not set; {export}"),
        "{file}:17:19: link `unset-two`: `local.url`: environment variables `REPLHUB_TEST_UNSET_HOST`, `REPLHUB_TEST_UNSET_PORT` are not set; export them before starting replhub".to_string(),
        // A follow-on error: the unexpanded text is then parsed as the URL.
        "{file}:17:19: link `unset-two`: `local.url`: not a valid URL (invalid port number); expected redis://[user[:password]@]host:port[/db] or rediss://…".to_string(),
        // ${NAME} is expanded, $$ is a literal $ (and `$${X}` is not expanded).
        "{file}:19:22: link `set-and-literal`: `local.prefix` \"__replhub__:expanded:${NOT_EXPANDED}:$\" overlaps `__replhub__:`, the namespace replhub reserves for itself".to_string(),
        "{file}:21:22: link `malformed`: `local.prefix`: `${not-a-name}` is not a valid variable reference (names use A-Z, a-z, 0-9 and _; write `$$` for a literal `$`)".to_string(),
        "{file}:23:22: link `unclosed`: `local.prefix`: `${` without a closing `}` (write `$$` for a literal `$`)".to_string(),
        "{file}: 7 errors".to_string(),
    ];
    scratch
        .check("env.yaml", &[("REPLHUB_TEST_SET", "expanded")])
        .assert(1, &expected.iter().map(String::as_str).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------
// TLS files
// ---------------------------------------------------------------------------

#[test]
fn check_tls_files_must_exist_be_files_parse_and_match() {
    let scratch = Scratch::new();
    // Tests run as root, and permission bits do not stop root from reading a
    // file; a directory where the file should be is unreadable for everyone.
    std::fs::create_dir(scratch.path("certs/a-directory.pem")).expect("mkdir");
    std::fs::create_dir(scratch.path("certs/a-directory.key")).expect("mkdir");
    scratch.write("certs/garbage.pem", "not PEM at all\n");
    scratch.write("certs/garbage.key", "not a key either\n");
    scratch.write("certs/not-x509.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let not_x509 =
        "does not parse as X.509: Parsing Error: Der(UnexpectedTag { expected: Some(Tag(16)), actual: Tag(0) })";
    let no_key = "no usable PEM private key (PKCS#8, PKCS#1 or SEC1) in the file: no items found";
    let no_cert = "no PEM certificate (\"-----BEGIN CERTIFICATE-----\") in the file";
    let expected = [
        "{file}:15:13: link `missing-dir-garbage`: `remote.tls.ca`: {dir}/certs/no-such-ca.pem: the file does not exist".to_string(),
        "{file}:16:15: link `missing-dir-garbage`: `remote.tls.cert`: {dir}/certs/a-directory.pem: this is a directory, not a file".to_string(),
        format!("{{file}}:17:14: link `missing-dir-garbage`: `remote.tls.key`: {{dir}}/certs/garbage.key: {no_key}"),
        format!("{{file}}:22:13: link `garbage-missing-dir`: `remote.tls.ca`: {{dir}}/certs/garbage.pem: {no_cert}"),
        "{file}:23:15: link `garbage-missing-dir`: `remote.tls.cert`: {dir}/certs/no-such-cert.pem: the file does not exist".to_string(),
        "{file}:24:14: link `garbage-missing-dir`: `remote.tls.key`: {dir}/certs/a-directory.key: this is a directory, not a file".to_string(),
        format!("{{file}}:29:13: link `not-x509`: `remote.tls.ca`: {{dir}}/certs/not-x509.pem: certificate #1 {not_x509}"),
        format!("{{file}}:30:15: link `not-x509`: `remote.tls.cert`: {{dir}}/certs/not-x509.pem: the certificate {not_x509}"),
        format!("{{file}}:36:13: link `key-is-not-a-cert`: `remote.tls.ca`: {{dir}}/certs/site-a.key: {no_cert}"),
        format!("{{file}}:38:14: link `key-is-not-a-cert`: `remote.tls.key`: {{dir}}/certs/site-a.pem: {no_key}"),
        "{file}:45:14: link `key-mismatch`: `remote.tls.key`: {dir}/certs/site-b.key: the private key does not match the certificate {dir}/certs/site-a.pem; use the key the certificate was issued for".to_string(),
        "{file}:50:13: link `absolute-path`: `remote.tls.ca`: /nonexistent/replhub-test/ca.pem: the file does not exist".to_string(),
        "{file}: 12 errors".to_string(),
    ];
    scratch.check("tls_files.yaml", &[]).assert(1, &expected.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn check_https_needs_ca_cert_and_key() {
    let scratch = Scratch::new();
    scratch.check("remote_tls.yaml", &[]).assert(
        1,
        &[
            "{file}:10:13: link `no-tls`: `remote.tls` is missing; https:// remotes need `ca`, `cert` and `key` (mutual TLS)",
            "{file}:14:12: link `no-key`: `remote.tls.key` is missing; mutual TLS needs ca, cert and key",
            "{file}:18:12: link `only-ca`: `remote.tls.cert` is missing; mutual TLS needs ca, cert and key",
            "{file}:18:12: link `only-ca`: `remote.tls.key` is missing; mutual TLS needs ca, cert and key",
            "{file}:23:12: link `local-cert-without-key`: `local.tls.key` is missing; cert and key go together",
            "{file}:30:12: warning: link `local-tls-ignored`: `local.tls` is ignored because `local.url` is redis:// (use rediss:// for TLS)",
            "{file}: 5 errors",
        ],
    );
}

#[test]
fn check_client_certificate_must_be_valid_now_and_warns_before_it_expires() {
    let scratch = Scratch::new();
    let now = SystemTime::now();
    scratch.issue("expired", 0x20, now - 30 * DAY, now - DAY);
    scratch.issue("future", 0x21, now + DAY, now + 365 * DAY);
    // 3 days and an hour: "3 days" however long the test takes.
    scratch.issue("soon", 0x22, now - DAY, now + 3 * DAY + Duration::from_secs(3600));
    scratch.issue("later", 0x23, now - DAY, now + 20 * DAY);
    let time = |stem: &str, not_after: bool| cert_time(&scratch.path(&format!("certs/{stem}.pem")), not_after);
    let expected = [
        format!(
            "{{file}}:14:20: link `expired`: `remote.tls.cert`: {{dir}}/certs/expired.pem: the client certificate expired on {}; install a renewed certificate",
            time("expired", true)
        ),
        format!(
            "{{file}}:18:20: link `not-yet-valid`: `remote.tls.cert`: {{dir}}/certs/future.pem: the client certificate is not valid yet (notBefore {}); check the clock or the certificate",
            time("future", false)
        ),
        format!(
            "{{file}}:22:20: warning: link `expires-soon`: `remote.tls.cert`: {{dir}}/certs/soon.pem: the client certificate expires in 3 days ({}); renew it soon",
            time("soon", true)
        ),
        "{file}: 2 errors".to_string(),
    ];
    scratch.check("cert_dates.yaml", &[]).assert(1, &expected.iter().map(String::as_str).collect::<Vec<_>>());

    // Alone, an expiring certificate is a warning: the file is valid.
    let expected = [
        format!(
            "{{file}}:9:40: warning: link `sensors`: `remote.tls.cert`: {{dir}}/certs/soon.pem: the client certificate expires in 3 days ({}); renew it soon",
            time("soon", true)
        ),
        "{file}: ok (1 link)".to_string(),
    ];
    scratch.check("expires_soon.yaml", &[]).assert(0, &expected.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn check_private_key_readable_by_group_or_others_is_a_warning() {
    let scratch = Scratch::new();
    let key = scratch.path("certs/site-a.key");
    for mode in [0o640, 0o604, 0o644] {
        chmod(&key, mode);
        let warning = format!(
            "{{file}}:9:65: warning: link `sensors`: `remote.tls.key`: {{dir}}/certs/site-a.key: the private key is readable by group or others (mode {mode:04o}); run `chmod 600` on it"
        );
        scratch.check("key_permissions.yaml", &[]).assert(0, &[warning.as_str(), "{file}: ok (1 link)"]);
    }
    chmod(&key, 0o600);
    scratch.check("key_permissions.yaml", &[]).assert(0, &["{file}: ok (1 link)"]);
}

// ---------------------------------------------------------------------------
// Tuning values
// ---------------------------------------------------------------------------

#[test]
fn check_durations_and_heartbeat_timeout_longer_than_interval() {
    let scratch = Scratch::new();
    let dead = "or every stream would count as dead";
    let not_valid = "is not valid. A duration written as a string: \"500ms\", \"15s\", \"10m\", \"1h\", or a sum such as \"1m30s\".";
    // Each bad duration is ONE error: the schema's pattern already refuses
    // it, and it must not be reported a second time in other words.
    let expected = [
        format!("{{file}}:13:43: link `timeout-equals-interval`: `heartbeat.timeout` (5s) must be longer than `heartbeat.interval` (5s), {dead}"),
        format!("{{file}}:16:43: link `timeout-shorter`: `heartbeat.timeout` (1500ms) must be longer than `heartbeat.interval` (60s), {dead}"),
        format!("{{file}}:19:27: link `timeout-shorter-than-default-interval`: `heartbeat.timeout` (2s) must be longer than `heartbeat.interval` (3s), {dead}"),
        "{file}:22:28: link `zero-interval`: `heartbeat.interval` must be more than 0s".to_string(),
        format!("{{file}}:25:28: link `words`: `heartbeat.interval`: \"3 seconds\" {not_valid}"),
        format!("{{file}}:26:22: link `words`: `resync_interval`: \"10 minutes\" {not_valid}"),
        format!("{{file}}:29:28: link `fractions-and-units`: `heartbeat.interval`: \"1.5s\" {not_valid}"),
        format!("{{file}}:29:45: link `fractions-and-units`: `heartbeat.timeout`: \"5\" {not_valid}"),
        format!("{{file}}:30:22: link `fractions-and-units`: `resync_interval`: \"1d\" {not_valid}"),
        // Matches the pattern but does not fit: only the semantic check sees it.
        "{file}:33:22: link `too-long`: `resync_interval`: \"99999999999h\" is not a duration like \"500ms\", \"15s\", \"10m\"".to_string(),
        format!("{{file}}:34:19: `shutdown_timeout`: \"ten seconds\" {not_valid}"),
        "{file}: 11 errors".to_string(),
    ];
    scratch.check("durations.yaml", &[]).assert(1, &expected.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn check_max_delete_fraction_is_between_0_and_1() {
    let scratch = Scratch::new();
    scratch.check("max_delete_fraction.yaml", &[]).assert(
        1,
        &[
            // Reported once, where it is written, not once per inheriting link.
            "{file}:9:24: defaults: `max_delete_fraction` must be in the range 0 to 1, got 1.5",
            "{file}:15:26: link `negative`: `max_delete_fraction` must be in the range 0 to 1, got -0.1",
            "{file}:18:26: link `percent`: `max_delete_fraction` must be in the range 0 to 1, got 50",
            "{file}: 3 errors",
        ],
    );
}

// ---------------------------------------------------------------------------
// Defaults
// ---------------------------------------------------------------------------

#[test]
fn check_defaults_are_deep_merged_and_a_link_overrides_single_files() {
    let scratch = Scratch::new();
    std::fs::copy(scratch.path("certs/ca.pem"), scratch.path("certs/ca-copy.pem")).expect("copy ca.pem");
    scratch.check("defaults.yaml", &[]).assert(0, &["{file}: ok (2 links)"]);
}

#[test]
fn check_errors_in_inherited_values_point_into_defaults() {
    let scratch = Scratch::new();
    scratch.check("defaults_errors.yaml", &[]).assert(
        1,
        &[
            // The key is inherited: its line in `defaults`, named for the link.
            "{file}:11:12: link `site-b-cert`: `remote.tls.key`: {dir}/certs/site-a.key: the private key does not match the certificate {dir}/certs/site-b.pem; use the key the certificate was issued for",
            "{file}:23:27: link `short-timeout`: `heartbeat.timeout` (5s) must be longer than `heartbeat.interval` (10s), or every stream would count as dead",
            "{file}:27:20: link `key-unset`: `remote.tls.key` is missing; mutual TLS needs ca, cert and key",
            "{file}: 3 errors",
        ],
    );
}

#[test]
fn check_missing_keys_are_reported_at_the_link_not_inside_defaults() {
    // `defaults` has `local` and `remote` sections, these links lack a key
    // in them: the error belongs to the link (line 9 and 12), where the key
    // must be added, not to the section in `defaults` (lines 5 and 6).
    let scratch = Scratch::new();
    scratch.check("missing_in_link.yaml", &[]).assert(
        1,
        &[
            "{file}:9:5: link `no-prefix`: `local.prefix` is missing; every link replicates one namespace, e.g. prefix: \"app:\"",
            "{file}:12:5: link `no-tls`: `remote.tls` is missing; https:// remotes need `ca`, `cert` and `key` (mutual TLS)",
            "{file}: 2 errors",
        ],
    );
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

#[test]
fn check_never_prints_secrets() {
    let scratch = Scratch::new();
    let env_secret = "env-secret-9d41";
    let url_secret = "url-secret-5f2c";
    let overlaps = "namespaces of links on one database must not overlap";
    let expected = [
        format!(
            "{{file}}:13:5: link `url-password-overlap`: `remote.prefix` \"a:b:\" overlaps link `url-password`'s \"a:\" on the same Redis (https://localhost:18443/ db 0); {overlaps}"
        ),
        format!(
            "{{file}}:14:77: link `url-password-overlap`: `local.prefix` \"a:b:\" overlaps link `url-password`'s \"a:\" on the same Redis (127.0.0.1:6379 db 0); {overlaps}"
        ),
        "{file}:16:19: link `url-password-bad-db`: `local.url`: the database \"/zero\" is not a number; expected redis://[user[:password]@]host:port[/db] or rediss://…".to_string(),
        "{file}:18:19: link `url-password-bad-port`: `local.url`: not a valid URL (invalid port number); expected redis://[user[:password]@]host:port[/db] or rediss://…".to_string(),
        "{file}:21:35: link `bad-user`: `remote.basic_auth.user` must be non-empty and contain no `:`".to_string(),
        "{file}: 5 errors".to_string(),
    ];
    let run = scratch.check("secrets.yaml", &[("REPLHUB_TEST_SECRET", env_secret)]);
    run.assert(1, &expected.iter().map(String::as_str).collect::<Vec<_>>());
    run.assert_hides(env_secret);
    run.assert_hides(url_secret);

    let run = scratch.check("secrets_syntax.yaml", &[]);
    run.assert(
        1,
        &["{file}:6:68: YAML syntax error: invalid trailing content after double-quoted scalar", "{file}: 1 error"],
    );
    run.assert_hides(url_secret);
}

// ---------------------------------------------------------------------------
// Every error at once
// ---------------------------------------------------------------------------

/// (line, col) of a `{file}:LINE:COL: …` line.
fn position(line: &str) -> Option<(u64, u64)> {
    let mut parts = line.strip_prefix("{file}:")?.splitn(3, ':');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[test]
fn check_prints_every_error_of_many_sorted_by_position() {
    let scratch = Scratch::new();
    let expected = [
        "{file}:3:10: `version` must be 1 (this replhub reads version 1 files), got 2",
        "{file}:5:11: `admin.listen` \"localhost:9750\" is not an address; write it like \"127.0.0.1:9750\"",
        "{file}:16:22: link `orders-copy`: `local.prefix` \"orders:\" overlaps link `orders`'s \"orders:\" on the same Redis (127.0.0.1:6379 db 0); namespaces of links on one database must not overlap",
        "{file}:18:11: link `telemetry 2`: `name` \"telemetry 2\" is not valid; use 1 to 64 characters from A-Z a-z 0-9 _ . -",
        "{file}:19:19: link `telemetry 2`: `local.url`: the URL has no port; expected redis://[user[:password]@]host:port[/db] or rediss://…",
        "{file}:20:20: link `telemetry 2`: `remote.url` is http:// (no TLS); use https://, or set `remote.insecure_plaintext: true` (tests on loopback only)",
        "{file}:21:43: link `telemetry 2`: `heartbeat.timeout` (5s) must be longer than `heartbeat.interval` (5s), or every stream would count as dead",
        "{file}:24:22: link `global`: `local.prefix` is empty; an empty prefix would replicate the whole database, so name the namespace (e.g. \"app:\")",
        "{file}:26:15: link `global`: `remote.prefix` \"__replhub__:global:\" overlaps `__replhub__:`, the namespace replhub reserves for itself",
        "{file}:27:18: link `global`: `remote.tls.ca`: {dir}/certs/no-such-ca.pem: the file does not exist",
        "{file}:28:47: link `global`: `remote.basic_auth.password`: environment variable `REPLHUB_TEST_UNSET` is not set; export it before starting replhub",
        "{file}:29:11: link `orders`: duplicate link name (first used on line 13); link names must be unique",
        "{file}:31:26: link `orders`: `max_delete_fraction` must be in the range 0 to 1, got 2",
        "{file}:32:12: link `orders`: `types` is empty, so the link would replicate nothing; remove it to replicate all five types",
        "{file}:34:19: `shutdown_timeout`: \"99999999999h\" is not a duration like \"500ms\", \"15s\", \"10m\"",
        "{file}: 15 errors",
    ];
    let run = scratch.check("many_errors.yaml", &[]);
    run.assert(1, &expected);
    let positions: Vec<(u64, u64)> = run.lines().iter().filter_map(|l| position(l)).collect();
    assert!(positions.is_sorted(), "not sorted by position: {positions:?}");
}

#[test]
fn check_a_structural_error_in_one_link_does_not_hide_the_other_links_errors() {
    let scratch = Scratch::new();
    scratch.check("mixed_errors.yaml", &[]).assert(
        1,
        &[
            "{file}:12:16: link `typo`: `direction` must be one of push, pull, both; got `puhs`",
            "{file}:16:26: link `sensors`: `remote.tls.ca`: {dir}/certs/no-such-ca.pem: the file does not exist",
            "{file}:17:11: link `sensors`: duplicate link name (first used on line 14); link names must be unique",
            "{file}:18:19: link `sensors`: `local.url`: the URL has no port; expected redis://[user[:password]@]host:port[/db] or rediss://…",
            "{file}: 4 errors",
        ],
    );
}

#[test]
fn check_overlap_is_reported_even_when_one_of_the_links_has_another_error() {
    let scratch = Scratch::new();
    scratch.check("overlap_with_errors.yaml", &[]).assert(
        1,
        &[
            "{file}:13:41: link `orders`: `remote.tls.ca`: {dir}/certs/no-such-ca.pem: the file does not exist",
            "{file}:15:22: link `orders-eu`: `local.prefix` \"orders:eu:\" overlaps link `orders`'s \"orders:\" on the same Redis (127.0.0.1:6379 db 0); namespaces of links on one database must not overlap",
            "{file}: 2 errors",
        ],
    );
}

// ---------------------------------------------------------------------------
// `replhub schema`, `replhub --version`, the examples
// ---------------------------------------------------------------------------

#[test]
fn check_schema_command_prints_the_checked_in_schema() {
    let run = replhub(&[OsStr::new("schema")], &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let file = manifest_dir().join("schemas").join("replhub.schema.json");
    let checked_in = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    assert!(
        run.stdout == checked_in,
        "`replhub schema` differs from schemas/replhub.schema.json; regenerate it with\n    cargo run -- schema > schemas/replhub.schema.json"
    );
}

#[test]
fn check_version_flag_prints_the_crate_version() {
    let run = replhub(&[OsStr::new("--version")], &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, format!("replhub {}\n", env!("CARGO_PKG_VERSION")));
}

/// Every `examples/*.yaml`, sorted.
fn example_files() -> Vec<PathBuf> {
    let dir = manifest_dir().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for required in ["demo.yaml", "fleet-site.yaml"] {
        assert!(names.iter().any(|n| n == required), "examples/{required} is missing: {names:?}");
    }
    files
}

/// Every string of the tree with the dotted key path that leads to it.
fn strings(node: &Node, path: &str, out: &mut Vec<(String, String)>) {
    match &node.value {
        NodeValue::Str(s) => out.push((path.to_string(), s.clone())),
        NodeValue::Seq(items) => items.iter().for_each(|item| strings(item, &format!("{path}[]"), out)),
        NodeValue::Map(entries) => {
            for (key, value) in entries {
                let path = if path.is_empty() { key.name.clone() } else { format!("{path}.{}", key.name) };
                strings(value, &path, out);
            }
        }
        _ => {}
    }
}

/// The names of the `${NAME}` references in `text`.
fn env_references(text: &str) -> Vec<String> {
    text.split("${").skip(1).filter_map(|rest| rest.split_once('}')).map(|(name, _)| name.to_string()).collect()
}

#[test]
fn check_examples_declare_the_schema_and_use_variables_only_for_secrets() {
    for file in example_files() {
        let shown = file.strip_prefix(manifest_dir()).unwrap_or(&file).display().to_string();
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {shown}: {e}"));
        assert_eq!(text.lines().next(), Some(SCHEMA_HEADER), "{shown} must start with the schema line");
        let tree = replhub::config::tree::parse(&text).unwrap_or_else(|e| panic!("{shown}: {e:?}"));
        let mut values = Vec::new();
        strings(&tree, "", &mut values);
        for (path, value) in &values {
            let key = path.rsplit('.').next().unwrap_or(path);
            if value.contains("${") {
                assert_eq!(
                    key, "password",
                    "{shown}: `{path}` is {value:?}; only secrets come from the environment, never paths or URLs"
                );
            }
            if key == "password" {
                assert!(
                    value.starts_with("${") && value.ends_with('}'),
                    "{shown}: `{path}` must be a `${{VARIABLE}}`, never the password itself"
                );
            }
            if ["ca", "cert", "key", "state_dir"].contains(&key) {
                assert!(
                    !value.starts_with('/'),
                    "{shown}: `{path}` is the absolute path {value:?}; examples use paths relative to the file"
                );
            }
        }
    }
}

#[test]
fn check_examples_pass_check_with_their_secrets_set() {
    for file in example_files() {
        let text = std::fs::read_to_string(&file).expect("read the example");
        let names = env_references(&text);
        let env: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "example-secret")).collect();
        let run = replhub(&[OsStr::new("check"), OsStr::new("-c"), file.as_os_str()], &env);
        let last = run.stdout.lines().last().unwrap_or_default().to_string();
        assert!(
            run.code == Some(0) && last.starts_with(&format!("{}: ok (", file.display())),
            "{} does not pass `replhub check` (exit {:?}):\n{}{}",
            file.display(),
            run.code,
            run.stdout,
            run.stderr_tail()
        );
        run.assert_hides("example-secret");
    }
}

// ---------------------------------------------------------------------------
// check --connect, against the real stack
// ---------------------------------------------------------------------------

/// A config whose `defaults` point at `stack` with the site-a certificate.
fn connect_config(stack: &Stack, links: &str) -> String {
    let pki = stack.pki();
    let site = pki.client(SITE_A);
    format!(
        "version: 1\ndefaults:\n  local: {{ url: {} }}\n  remote:\n    url: {}\n    tls: {{ ca: {}, cert: {}, key: {} }}\n  direction: push\nlinks:\n{links}",
        yaml_str(&stack.local().url()),
        yaml_str(&stack.remote_url()),
        yaml_str(&pki.ca_cert().display().to_string()),
        yaml_str(&site.cert.display().to_string()),
        yaml_str(&site.key.display().to_string()),
    )
}

/// Runs `check --connect` on `yaml`, with the stack's URLs written as
/// `{local}/` (the local redis-server) and `{remote}` (nginx).
fn check_connect(scratch: &Scratch, stack: &Stack, yaml: &str, env: &[(&str, &str)]) -> Run {
    let path = scratch.write("connect.yaml", yaml);
    let run = replhub(&[OsStr::new("check"), OsStr::new("--connect"), OsStr::new("-c"), path.as_os_str()], env);
    run.replace(&path.display().to_string(), "{file}")
        .replace(&stack.remote_url(), "{remote}")
        .replace(&format!("redis://127.0.0.1:{}/", stack.local().port()), "{local}/")
}

#[test]
fn check_connect_reports_ok_for_every_link_that_works() {
    let stack = Stack::start(StackOptions::default());
    let scratch = Scratch::new();
    let links = format!(
        "  - name: sensors
    local: {{ prefix: \"sensors:\" }}
    remote: {{ prefix: \"site-a:sensors:\" }}
  - name: global
    direction: pull
    local: {{ url: \"redis://127.0.0.1:{port}/1\", prefix: \"global:\" }}
",
        port = stack.local().port()
    );
    check_connect(&scratch, &stack, &connect_config(&stack, &links), &[]).assert(
        0,
        &[
            "{file}: ok (2 links)",
            "link `sensors`: local: ok ({local}/0)",
            "link `sensors`: remote: ok ({remote}: TLS handshake and PING through Webdis)",
            "link `global`: local: ok ({local}/1)",
            "link `global`: remote: ok ({remote}: TLS handshake and PING through Webdis)",
        ],
    );
}

#[test]
fn check_connect_reports_what_failed_for_each_link() {
    let stack = Stack::start(StackOptions { acl: Acl::Central, ..StackOptions::default() });
    let scratch = Scratch::new();
    let pki = stack.pki();
    let rogue = pki.client(ROGUE);
    let site_b = pki.client(SITE_B);
    let site_b_auth = central_basic_auth(SITE_B);
    let (_, site_b_password) = site_b_auth.split_once(':').expect("user:password");
    let wrong_password = "wrong-secret-7c1e";
    let url_password = "local-secret-3b9a";
    let local_with_password = format!("redis://:{url_password}@127.0.0.1:{}/2", stack.local().port());
    let auth = |password_var: &str| format!("basic_auth: {{ user: \"site-b\", password: \"${{{password_var}}}\" }}");
    let links = format!(
        "  # Everything right: site-b's certificate and password.
  - name: good
    local: {{ url: {local_with_password:?}, prefix: \"a:\" }}
    remote:
      prefix: \"site-b:a:\"
      tls: {{ cert: {cert:?}, key: {key:?} }}
      {good_auth}
  # A client certificate from a CA nginx does not trust.
  - name: rogue-cert
    local: {{ prefix: \"b:\" }}
    remote:
      tls: {{ cert: {rogue_cert:?}, key: {rogue_key:?} }}
      {good_auth}
  # Through nginx, but the Webdis ACL refuses the wrong password ...
  - name: wrong-password
    local: {{ prefix: \"c:\" }}
    remote: {{ {wrong_auth} }}
  # ... and requests without basic auth.
  - name: no-basic-auth
    local: {{ prefix: \"d:\" }}
",
        cert = site_b.cert.display().to_string(),
        key = site_b.key.display().to_string(),
        good_auth = auth("REPLHUB_TEST_PASSWORD"),
        rogue_cert = rogue.cert.display().to_string(),
        rogue_key = rogue.key.display().to_string(),
        wrong_auth = auth("REPLHUB_TEST_WRONG_PASSWORD"),
    );
    let env = [("REPLHUB_TEST_PASSWORD", site_b_password), ("REPLHUB_TEST_WRONG_PASSWORD", wrong_password)];
    let run = check_connect(&scratch, &stack, &connect_config(&stack, &links), &env);
    let forbidden = "{remote} answered 403 Forbidden to PING: the Webdis ACL does not allow it with these credentials (check remote.basic_auth and the ACL)";
    let expected = [
        "{file}: ok (4 links)".to_string(),
        "link `good`: local: ok (redis://:***@127.0.0.1:{local_port}/2)".to_string(),
        "link `good`: remote: ok ({remote}: TLS handshake and PING through Webdis)".to_string(),
        "link `rogue-cert`: local: ok ({local}/0)".to_string(),
        "link `rogue-cert`: remote: FAILED: {remote} refused the client certificate (HTTP 400 from the proxy: the client certificate was not accepted); check that remote.tls.cert is issued by a CA the proxy trusts".to_string(),
        "link `wrong-password`: local: ok ({local}/0)".to_string(),
        format!("link `wrong-password`: remote: FAILED: {forbidden}"),
        "link `no-basic-auth`: local: ok ({local}/0)".to_string(),
        format!("link `no-basic-auth`: remote: FAILED: {forbidden}"),
    ];
    let run = run.replace(&format!("127.0.0.1:{}/2", stack.local().port()), "127.0.0.1:{local_port}/2");
    run.assert_hides(site_b_password);
    run.assert_hides(wrong_password);
    run.assert_hides(url_password);
    run.assert(1, &expected.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn check_connect_reports_a_server_certificate_from_an_unknown_ca() {
    let stack = Stack::start(StackOptions::default());
    let scratch = Scratch::new();
    let foreign_ca = stack.pki().foreign_ca_cert().display().to_string();
    let links = format!(
        "  - name: unknown-ca\n    local: {{ prefix: \"c:\" }}\n    remote: {{ tls: {{ ca: {foreign_ca:?} }} }}\n"
    );
    check_connect(&scratch, &stack, &connect_config(&stack, &links), &[]).assert(
        1,
        &[
            "{file}: ok (1 link)",
            "link `unknown-ca`: local: ok ({local}/0)",
            "link `unknown-ca`: remote: FAILED: TLS with {remote} failed: the server's certificate is not signed by remote.tls.ca (unknown CA)",
        ],
    );
}

#[test]
fn check_connect_reports_a_remote_that_never_answers() {
    let stack = Stack::start(StackOptions::default());
    let scratch = Scratch::new();
    // Accepts TCP connections (the kernel completes them into the backlog)
    // but never reads or answers: the TLS handshake hangs.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let silent_url = format!("https://localhost:{}/", silent.local_addr().expect("local address").port());
    let links = format!("  - name: silent\n    local: {{ prefix: \"s:\" }}\n    remote: {{ url: {silent_url:?} }}\n");
    let run = check_connect(&scratch, &stack, &connect_config(&stack, &links), &[]).replace(&silent_url, "{silent}");
    run.assert(
        1,
        &[
            "{file}: ok (1 link)",
            "link `silent`: local: ok ({local}/0)",
            "link `silent`: remote: FAILED: {silent} did not answer PING within 10s",
        ],
    );
    assert!(run.elapsed < Duration::from_secs(15), "the timeout took {:?}", run.elapsed);
    drop(silent);
}

#[test]
fn check_connect_reports_a_local_redis_that_refuses_the_connection_at_once() {
    let stack = Stack::start(StackOptions::default());
    let scratch = Scratch::new();
    // A loopback port nothing listens on: connecting is refused.
    let closed_port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let closed_url = format!("redis://127.0.0.1:{closed_port}/0");
    let links = format!("  - name: refused\n    local: {{ url: {closed_url:?}, prefix: \"r:\" }}\n");
    let run = check_connect(&scratch, &stack, &connect_config(&stack, &links), &[]);
    let lines = run.lines();
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert_eq!(lines[0], "{file}: ok (1 link)");
    let prefix = format!("link `refused`: local: FAILED: local Redis {closed_url}: ");
    assert!(
        lines[1].starts_with(&prefix) && lines[1].to_lowercase().contains("refused"),
        "the line should say that {closed_url} refused the connection: {:?}",
        lines[1]
    );
    assert_eq!(lines[2], "link `refused`: remote: ok ({remote}: TLS handshake and PING through Webdis)");
    assert!(run.elapsed < Duration::from_secs(5), "a refused connection took {:?} to report", run.elapsed);
}
