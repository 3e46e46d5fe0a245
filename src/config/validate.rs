//! Semantic checks and the step from raw structs to runtime types.
//!
//! Input: the interpolated, schema-checked tree. Output: a [`Config`] when
//! nothing is wrong, and in every case a list of diagnostics naming the line,
//! the link and the key. Each link is validated independently (after merging
//! `defaults` into it), so one broken link does not hide the problems of
//! another; cross-link rules (unique names, disjoint namespaces) run last.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::diagnostic::{Diagnostics, context_prefix, describe_path};
use super::model::{Conflict, DataType, Direction, RawLink, RawLinkSettings, RawTls};
use super::runtime::{
    AdminConfig, BasicAuth, Config, DEFAULT_SHUTDOWN_TIMEOUT, Heartbeat, LinkConfig, LocalEndpoint, RedisUrl,
    RemoteEndpoint, Secret, TlsPaths,
};
use super::tls_files::{TlsFile, load_client_tls};
use super::tree::{Node, NodeValue, PathSeg, Pos};

/// The namespace replhub keeps for itself on both sides.
pub const RESERVED_PREFIX: &[u8] = b"__replhub__:";

const DEFAULT_HEARTBEAT: Heartbeat = Heartbeat { interval: Duration::from_secs(3), timeout: Duration::from_secs(15) };
const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(600);
const DEFAULT_MAX_DELETE_FRACTION: f64 = 0.5;

/// Validates a schema-checked tree. `path` is the file as the user named it.
pub fn validate(root: &Node, path: &Path, now: SystemTime, diags: &mut Diagnostics) -> Option<Config> {
    if !matches!(root.value, NodeValue::Map(_)) {
        if !diags.has_errors() {
            diags.error(root.pos, "the file must be a mapping with `version` and `links`");
        }
        return None;
    }
    // Part by part, so that a value of the wrong type (reported by the
    // schema check) only stops the checks of the part it is in.
    let part = |name: &str| root.get(name).map(Node::to_json).unwrap_or(serde_json::Value::Null);
    let version: Option<i64> = serde_json::from_value(part("version")).unwrap_or(None);
    let raw_admin: Option<super::model::RawAdmin> = serde_json::from_value(part("admin")).unwrap_or(None);
    let raw_shutdown: Option<super::model::DurationText> =
        serde_json::from_value(part("shutdown_timeout")).unwrap_or(None);
    let raw_state_dir: Option<String> = serde_json::from_value(part("state_dir")).unwrap_or(None);
    let link_nodes: Vec<&Node> = match root.get("links").map(|n| &n.value) {
        Some(NodeValue::Seq(items)) => items.iter().collect(),
        _ => Vec::new(),
    };
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let v = Validator { root, base_dir, now };

    if let Some(version) = version
        && version != 1
    {
        let pos = v.pos(&[key("version")]);
        diags.error(pos, format!("`version` must be 1 (this replhub reads version 1 files), got {version}"));
    }
    let admin = raw_admin.as_ref().and_then(|admin| v.admin(&admin.listen, diags));
    let shutdown_timeout = match &raw_shutdown {
        Some(text) => v.duration(&text.0, &[key("shutdown_timeout")], diags).unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
        None => DEFAULT_SHUTDOWN_TIMEOUT,
    };
    let state_dir = raw_state_dir.as_deref().map(|dir| v.resolve(dir));

    let mut defaults_node =
        root.get("defaults").cloned().unwrap_or(Node { pos: root.pos, value: NodeValue::Map(vec![]) });
    let defaults_size = node_count(&defaults_node);
    if defaults_size > MAX_DEFAULTS_NODES {
        diags
            .error(defaults_node.pos, format!("`defaults` holds {defaults_size} values; at most {MAX_DEFAULTS_NODES}"));
        defaults_node = Node { pos: defaults_node.pos, value: NodeValue::Map(vec![]) };
    }
    let mut links = Vec::new();
    let mut spaces = Vec::new();
    let mut all_ok = true;
    for (i, link_node) in link_nodes.iter().enumerate() {
        let Ok(link) = serde_json::from_value::<RawLink>(link_node.to_json()) else {
            all_ok = false;
            continue;
        };
        let merged = defaults_node.merged_with(link_node);
        match v.link(i, &link, &merged, link_node, &mut spaces, diags) {
            Some(config) => links.push((i, config)),
            None => all_ok = false,
        }
    }
    let names: Vec<Option<&str>> = link_nodes.iter().map(|n| n.get("name").and_then(Node::as_str)).collect();
    v.unique_names(&names, diags);
    v.disjoint_namespaces(&spaces, diags);
    if link_nodes.is_empty() && root.get("links").is_some_and(|n| matches!(n.value, NodeValue::Seq(_))) {
        diags.warning(v.pos(&[key("links")]), "`links` is empty: replhub will run without replicating anything");
    }
    if diags.has_errors() || !all_ok || root.get("links").is_none() {
        return None;
    }
    Some(Config {
        path: path.to_path_buf(),
        admin,
        shutdown_timeout,
        state_dir,
        links: links.into_iter().map(|(_, l)| Arc::new(l)).collect(),
    })
}

/// One side of one link's namespace, for the overlap check.
struct Space {
    index: usize,
    name: String,
    side: &'static str,
    server: String,
    prefix: Vec<u8>,
}

const MAX_DEFAULTS_NODES: usize = 256;
const MAX_OVERLAPS_REPORTED: usize = 3;

fn node_count(node: &Node) -> usize {
    1 + match &node.value {
        NodeValue::Seq(items) => items.iter().map(node_count).sum(),
        NodeValue::Map(entries) => entries.iter().map(|(_, v)| node_count(v)).sum(),
        _ => 0,
    }
}

fn key(name: &str) -> PathSeg {
    PathSeg::Key(name.to_string())
}

struct Validator<'a> {
    root: &'a Node,
    base_dir: PathBuf,
    now: SystemTime,
}

/// Where inside one link a check is looking: its index, its merged tree
/// (for positions of inherited values) and how messages name it.
struct LinkScope<'a> {
    index: usize,
    merged: &'a Node,
    own: &'a Node,
    prefix: String,
}

impl LinkScope<'_> {
    fn pos(&self, path: &[&str]) -> Pos {
        let segs: Vec<PathSeg> = path.iter().map(|k| key(k)).collect();
        // Fall back to the nearest ancestor that exists, then to the link itself.
        (0..=segs.len()).rev().find_map(|n| self.merged.at(&segs[..n]).map(|node| node.pos)).unwrap_or(self.merged.pos)
    }
    /// For a key that is missing: the nearest ancestor the link itself
    /// writes, else the link (never a section inherited from `defaults`).
    fn missing_pos(&self, path: &[&str]) -> Pos {
        let segs: Vec<PathSeg> = path.iter().map(|k| key(k)).collect();
        (0..=segs.len()).rev().find_map(|n| self.own.at(&segs[..n]).map(|node| node.pos)).unwrap_or(self.own.pos)
    }
    fn missing(&self, diags: &mut Diagnostics, path: &[&str], message: impl AsRef<str>) {
        diags.error(self.missing_pos(path), format!("{}{}", self.prefix, message.as_ref()));
    }
    fn error(&self, diags: &mut Diagnostics, path: &[&str], message: impl AsRef<str>) {
        diags.error(self.pos(path), format!("{}{}", self.prefix, message.as_ref()));
    }
    fn warning(&self, diags: &mut Diagnostics, path: &[&str], message: impl AsRef<str>) {
        diags.warning(self.pos(path), format!("{}{}", self.prefix, message.as_ref()));
    }
}

impl Validator<'_> {
    fn pos(&self, path: &[PathSeg]) -> Pos {
        self.root.at(path).map(|n| n.pos).unwrap_or(self.root.pos)
    }

    fn resolve(&self, file: &str) -> PathBuf {
        let p = Path::new(file);
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }

    fn admin(&self, listen: &str, diags: &mut Diagnostics) -> Option<AdminConfig> {
        let pos = self.pos(&[key("admin"), key("listen")]);
        match listen.parse::<SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() {
                    diags.warning(
                        pos,
                        format!("`admin.listen` {addr} is reachable from other hosts; /metrics and /status are not authenticated"),
                    );
                }
                Some(AdminConfig { listen: addr })
            }
            Err(_) => {
                diags.error(
                    pos,
                    format!("`admin.listen` \"{listen}\" is not an address; write it like \"127.0.0.1:9750\""),
                );
                None
            }
        }
    }

    fn duration(&self, text: &str, path: &[PathSeg], diags: &mut Diagnostics) -> Option<Duration> {
        match parse_duration(text) {
            Some(d) => Some(d),
            // Not of the form the schema's pattern allows: the schema check reported it.
            None if !duration_syntax(text) => None,
            None => {
                let (context, key) = describe_path(self.root, path);
                diags.error(
                    self.pos(path),
                    format!(
                        "{}`{key}`: \"{text}\" is not a duration like \"500ms\", \"15s\", \"10m\"",
                        context_prefix(&context)
                    ),
                );
                None
            }
        }
    }

    fn link(
        &self,
        index: usize,
        raw: &RawLink,
        merged: &Node,
        own: &Node,
        spaces: &mut Vec<Space>,
        diags: &mut Diagnostics,
    ) -> Option<LinkConfig> {
        let (context, _) = describe_path(self.root, &[key("links"), PathSeg::Index(index)]);
        let scope = LinkScope { index, merged, own, prefix: context_prefix(&context) };
        let errors_before = diags.errors().count();
        let s: RawLinkSettings = match serde_json::from_value(merged.to_json()) {
            Ok(RawLink { settings, .. }) => settings,
            Err(_) => return None, // reported by the schema check (of the link or of `defaults`)
        };

        if !valid_link_name(&raw.name) {
            scope.error(
                diags,
                &["name"],
                format!(
                    "`name` \"{}\" is not valid; use 1 to 64 characters from A-Z a-z 0-9 _ . -",
                    raw.name.escape_debug()
                ),
            );
        }
        let direction = s.direction.or_else(|| {
            scope.error(diags, &[], "`direction` is missing; set push, pull or both on the link or in `defaults`");
            None
        });
        let local = self.local(&scope, s.local.clone().unwrap_or_default(), diags);
        let remote =
            self.remote(&scope, s.remote.clone().unwrap_or_default(), local.as_ref().map(|l| l.prefix.clone()), diags);

        if let Some(l) = &local {
            let (host, port) = l.url.server_key();
            let server = format!("{host}:{port} db {}", l.url.db);
            spaces.push(Space { index, name: raw.name.clone(), side: "local", server, prefix: l.prefix.clone() });
        }
        if let Some(r) = &remote {
            let (url, db) = r.server_key();
            let server = format!("{url} db {db}");
            spaces.push(Space { index, name: raw.name.clone(), side: "remote", server, prefix: r.prefix.clone() });
        }
        let mut types: Vec<DataType> = s
            .types
            .clone()
            .unwrap_or_else(|| vec![DataType::String, DataType::Hash, DataType::List, DataType::Set, DataType::Zset]);
        types.sort();
        types.dedup();
        if s.types.as_ref().is_some_and(Vec::is_empty) {
            scope.error(
                diags,
                &["types"],
                "`types` is empty, so the link would replicate nothing; remove it to replicate all five types",
            );
        }
        if let (Some(d), Some(_)) = (direction, own.get("conflict"))
            && d != Direction::Both
        {
            scope.warning(diags, &["conflict"], "`conflict` only applies to direction both; it is ignored here");
        }
        let heartbeat = self.heartbeat(&scope, &s, diags);
        let resync_interval = match &s.resync_interval {
            Some(text) => self
                .duration(&text.0, &scope_path(index, &["resync_interval"]), diags)
                .map(|d| (!d.is_zero()).then_some(d)),
            None => Some(Some(DEFAULT_RESYNC_INTERVAL)),
        };

        if diags.errors().count() > errors_before {
            return None;
        }
        Some(LinkConfig {
            name: raw.name.clone(),
            direction: direction?,
            local: local?,
            remote: remote?,
            types,
            conflict: s.conflict.unwrap_or(Conflict::RemoteWins),
            heartbeat: heartbeat?,
            resync_interval: resync_interval?,
            max_delete_fraction: s.max_delete_fraction.unwrap_or(DEFAULT_MAX_DELETE_FRACTION),
        })
    }

    fn heartbeat(&self, scope: &LinkScope<'_>, s: &RawLinkSettings, diags: &mut Diagnostics) -> Option<Heartbeat> {
        let raw = s.heartbeat.clone().unwrap_or_default();
        let path = |k: &str| scope_path(scope.index, &["heartbeat", k]);
        let interval = match &raw.interval {
            Some(t) => self.duration(&t.0, &path("interval"), diags)?,
            None => DEFAULT_HEARTBEAT.interval,
        };
        let timeout = match &raw.timeout {
            Some(t) => self.duration(&t.0, &path("timeout"), diags)?,
            None => DEFAULT_HEARTBEAT.timeout,
        };
        if interval.is_zero() {
            scope.error(diags, &["heartbeat", "interval"], "`heartbeat.interval` must be more than 0s");
            return None;
        }
        if timeout <= interval {
            scope.error(
                diags,
                &["heartbeat", "timeout"],
                format!(
                    "`heartbeat.timeout` ({}) must be longer than `heartbeat.interval` ({}), or every stream would count as dead",
                    format_duration(timeout),
                    format_duration(interval)
                ),
            );
            return None;
        }
        Some(Heartbeat { interval, timeout })
    }

    fn local(
        &self,
        scope: &LinkScope<'_>,
        raw: super::model::RawLocal,
        diags: &mut Diagnostics,
    ) -> Option<LocalEndpoint> {
        let url = match raw.url.as_deref() {
            Some(text) => match parse_redis_url(text) {
                Ok(url) => Some(url),
                Err(why) => {
                    scope.error(diags, &["local", "url"], format!("`local.url`: {why}"));
                    None
                }
            },
            None => {
                scope.error(diags, &["local"], "`local.url` is missing; e.g. url: \"redis://127.0.0.1:6379/0\"");
                None
            }
        };
        let prefix = self.prefix(scope, raw.prefix.as_deref(), &["local", "prefix"], diags);
        let tls = match (&url, raw.tls) {
            (Some(u), Some(tls)) if u.tls => self.tls_files(scope, &["local", "tls"], &tls, false, diags),
            (Some(_), Some(_)) => {
                scope.warning(
                    diags,
                    &["local", "tls"],
                    "`local.tls` is ignored because `local.url` is redis:// (use rediss:// for TLS)",
                );
                None
            }
            _ => None,
        };
        Some(LocalEndpoint { url: url?, prefix: prefix?, tls })
    }

    fn remote(
        &self,
        scope: &LinkScope<'_>,
        raw: super::model::RawRemote,
        local_prefix: Option<Vec<u8>>,
        diags: &mut Diagnostics,
    ) -> Option<RemoteEndpoint> {
        let insecure_plaintext = raw.insecure_plaintext.unwrap_or(false);
        let url = match raw.url.as_deref() {
            None => {
                scope.error(
                    diags,
                    &["remote"],
                    "`remote.url` is missing; e.g. url: \"https://central.example.org:8443/\"",
                );
                None
            }
            Some(text) => match parse_remote_url(text) {
                Err(why) => {
                    scope.error(diags, &["remote", "url"], format!("`remote.url`: {why}"));
                    None
                }
                Ok(url) if url.scheme() == "http" && !insecure_plaintext => {
                    scope.error(
                        diags,
                        &["remote", "url"],
                        "`remote.url` is http:// (no TLS); use https://, or set `remote.insecure_plaintext: true` (tests on loopback only)",
                    );
                    None
                }
                Ok(url) => Some(url),
            },
        };
        let prefix = match raw.prefix.as_deref() {
            Some(p) => self.prefix(scope, Some(p), &["remote", "prefix"], diags),
            None => local_prefix,
        };
        let https = url.as_ref().is_some_and(|u| u.scheme() == "https");
        let tls = match (&url, raw.tls) {
            (Some(_), Some(tls)) if https => Some(self.tls_files(scope, &["remote", "tls"], &tls, true, diags)),
            (Some(_), None) if https => {
                scope.missing(
                    diags,
                    &["remote"],
                    "`remote.tls` is missing; https:// remotes need `ca`, `cert` and `key` (mutual TLS)",
                );
                None
            }
            (Some(_), Some(_)) => {
                scope.warning(diags, &["remote", "tls"], "`remote.tls` is ignored for an http:// remote");
                Some(None)
            }
            _ => Some(None),
        };
        if url.is_some() && insecure_plaintext && !https {
            scope.warning(
                diags,
                &["remote", "insecure_plaintext"],
                "the remote is plain HTTP (`insecure_plaintext: true`): traffic is neither encrypted nor authenticated",
            );
        }
        let basic_auth = match raw.basic_auth {
            None => Some(None),
            Some(auth) => match (auth.user, auth.password) {
                (Some(user), _) if user.contains(':') || user.is_empty() => {
                    scope.error(
                        diags,
                        &["remote", "basic_auth", "user"],
                        "`remote.basic_auth.user` must be non-empty and contain no `:`",
                    );
                    None
                }
                (Some(user), Some(password)) => Some(Some(BasicAuth { user, password: Secret::new(password) })),
                (None, _) => {
                    scope.error(diags, &["remote", "basic_auth"], "`remote.basic_auth.user` is missing");
                    None
                }
                (Some(_), None) => {
                    scope.error(
                        diags,
                        &["remote", "basic_auth"],
                        "`remote.basic_auth.password` is missing; e.g. password: \"${WEBDIS_PASSWORD}\"",
                    );
                    None
                }
            },
        };
        let db = raw.db.unwrap_or(0);
        Some(RemoteEndpoint {
            url: url?,
            prefix: prefix?,
            tls: tls?,
            basic_auth: basic_auth?,
            db: u32::try_from(db).ok()?,
            insecure_plaintext,
        })
    }

    fn prefix(
        &self,
        scope: &LinkScope<'_>,
        prefix: Option<&str>,
        path: &[&str],
        diags: &mut Diagnostics,
    ) -> Option<Vec<u8>> {
        let shown = path.join(".");
        let Some(prefix) = prefix else {
            scope.missing(
                diags,
                &path[..1],
                format!("`{shown}` is missing; every link replicates one namespace, e.g. prefix: \"app:\""),
            );
            return None;
        };
        if prefix.is_empty() {
            scope.error(
                diags,
                path,
                format!("`{shown}` is empty; an empty prefix would replicate the whole database, so name the namespace (e.g. \"app:\")"),
            );
            return None;
        }
        let bytes = prefix.as_bytes();
        if bytes.starts_with(RESERVED_PREFIX) || RESERVED_PREFIX.starts_with(bytes) {
            scope.error(
                diags,
                path,
                format!(
                    "`{shown}` \"{}\" overlaps `__replhub__:`, the namespace replhub reserves for itself",
                    prefix.escape_debug()
                ),
            );
            return None;
        }
        Some(bytes.to_vec())
    }

    /// Checks a TLS file set. `mutual`: ca, cert and key are all required (the remote).
    fn tls_files(
        &self,
        scope: &LinkScope<'_>,
        at: &[&str],
        raw: &RawTls,
        mutual: bool,
        diags: &mut Diagnostics,
    ) -> Option<TlsPaths> {
        let paths = TlsPaths {
            ca: raw.ca.as_deref().map(|p| self.resolve(p)),
            cert: raw.cert.as_deref().map(|p| self.resolve(p)),
            key: raw.key.as_deref().map(|p| self.resolve(p)),
        };
        let shown = at.join(".");
        let mut complete = true;
        for (name, present) in
            [("ca", paths.ca.is_some()), ("cert", paths.cert.is_some()), ("key", paths.key.is_some())]
        {
            let required = mutual || (name != "ca" && (paths.cert.is_some() || paths.key.is_some()));
            if required && !present {
                let why = if mutual { "mutual TLS needs ca, cert and key" } else { "cert and key go together" };
                scope.error(diags, at, format!("`{shown}.{name}` is missing; {why}"));
                complete = false;
            }
        }
        if !complete {
            return None;
        }
        let file_path = |file: TlsFile| {
            let mut p = at.to_vec();
            p.push(file.key());
            p
        };
        match load_client_tls(&paths, self.now) {
            Ok((_, warnings)) => {
                for w in warnings {
                    scope.warning(diags, &file_path(w.file), format!("`{shown}.{}`: {}", w.file.key(), w.message));
                }
                Some(paths)
            }
            Err(errors) => {
                for e in errors {
                    scope.error(diags, &file_path(e.file), format!("`{shown}.{}`: {}", e.file.key(), e.message));
                }
                None
            }
        }
    }

    fn unique_names(&self, names: &[Option<&str>], diags: &mut Diagnostics) {
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            let Some(name) = name else { continue };
            let name_path = [key("links"), PathSeg::Index(i), key("name")];
            match first_seen.get(name) {
                Some(first) => {
                    let first_line = self.pos(&[key("links"), PathSeg::Index(*first), key("name")]).line;
                    diags.error(
                        self.pos(&name_path),
                        format!("link `{name}`: duplicate link name (first used on line {first_line}); link names must be unique"),
                    );
                }
                None => {
                    first_seen.insert(name, i);
                }
            }
        }
    }

    /// Two links whose namespaces overlap on the same Redis database would
    /// copy each other's keys; refuse that on either side.
    fn disjoint_namespaces(&self, spaces: &[Space], diags: &mut Diagnostics) {
        let mut groups: HashMap<(&str, &str), Vec<&Space>> = HashMap::new();
        for space in spaces {
            groups.entry((space.server.as_str(), space.side)).or_default().push(space);
        }
        let mut sides: Vec<_> = groups.into_iter().collect();
        sides.sort_by(|a, b| a.0.cmp(&b.0));
        for ((server, side), mut members) in sides {
            members.sort_by(|a, b| a.prefix.cmp(&b.prefix));
            // After sorting, the earlier links whose prefix starts `later`'s are
            // exactly a stack (each a prefix of the next); report against at
            // most MAX_OVERLAPS_REPORTED of them, so N links sharing a prefix
            // give O(N) errors, not N²/2.
            let mut open: Vec<&Space> = Vec::new();
            for later in members.iter().copied() {
                while open.last().is_some_and(|top| !later.prefix.starts_with(&top.prefix)) {
                    open.pop();
                }
                let enclosing: Vec<&Space> = open.iter().take(MAX_OVERLAPS_REPORTED).copied().collect();
                open.push(later);
                for first in enclosing {
                    let pos = self.pos(&[key("links"), PathSeg::Index(later.index), key(side), key("prefix")]);
                    let pos =
                        if pos == self.root.pos { self.pos(&[key("links"), PathSeg::Index(later.index)]) } else { pos };
                    diags.error(
                        pos,
                        format!(
                            "link `{}`: `{side}.prefix` \"{}\" overlaps link `{}`'s \"{}\" on the same Redis ({server}); namespaces of links on one database must not overlap",
                            later.name,
                            String::from_utf8_lossy(&later.prefix).escape_debug(),
                            first.name,
                            String::from_utf8_lossy(&first.prefix).escape_debug(),
                        ),
                    );
                }
            }
        }
    }
}

fn scope_path(index: usize, keys: &[&str]) -> Vec<PathSeg> {
    let mut path = vec![key("links"), PathSeg::Index(index)];
    path.extend(keys.iter().map(|k| key(k)));
    path
}

/// `[A-Za-z0-9_.-]{1,64}`
pub fn valid_link_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// `^([0-9]+(ms|s|m|h))+$`, the pattern of `DurationText` in the schema.
fn duration_syntax(text: &str) -> bool {
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        rest = if let Some(r) = rest.strip_prefix("ms") {
            r
        } else if let Some(r) = rest.strip_prefix(['s', 'm', 'h']) {
            r
        } else {
            return false;
        };
    }
    true
}

/// "500ms", "15s", "10m", "1h", "1m30s".
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return None;
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(value).ok()?)?)?;
        rest = &rest[len..];
    }
    Some(total)
}

/// Renders a duration the way the config file writes it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) { format!("{ms}ms") } else { format!("{}s", ms / 1000) }
}

/// Parses `redis://[user[:password]@]host:port[/db]` (or `rediss://`).
pub fn parse_redis_url(text: &str) -> Result<RedisUrl, String> {
    let expected = "expected redis://[user[:password]@]host:port[/db] or rediss://…";
    let url = url::Url::parse(text).map_err(|e| format!("not a valid URL ({e}); {expected}"))?;
    let tls = match url.scheme() {
        "redis" => false,
        "rediss" => true,
        other => return Err(format!("the scheme `{other}` is not supported; {expected}")),
    };
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| format!("the URL has no host; {expected}"))?;
    let port = url.port().ok_or_else(|| format!("the URL has no port; {expected}"))?;
    let db_text = url.path().trim_start_matches('/');
    let db = if db_text.is_empty() {
        0
    } else {
        db_text.parse::<u32>().map_err(|_| format!("the database \"/{db_text}\" is not a number; {expected}"))?
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("query strings and fragments are not supported; {expected}"));
    }
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
    };
    let username = Some(url.username()).filter(|u| !u.is_empty()).map(decode);
    let password = url.password().map(|p| Secret::new(decode(p)));
    Ok(RedisUrl { tls, host: host.to_string(), port, db, username, password })
}

/// Parses the remote base URL (https://, or http:// for insecure tests).
pub fn parse_remote_url(text: &str) -> Result<url::Url, String> {
    let expected = "expected a base URL like https://central.example.org:8443/";
    let mut url = url::Url::parse(text).map_err(|e| format!("not a valid URL ({e}); {expected}"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(format!("the scheme `{}` is not supported; {expected}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("the URL has no host; {expected}"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials do not belong in the URL; use `remote.basic_auth`".to_string());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("query strings and fragments are not supported; {expected}"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("99999999999h"), None);
    }

    #[test]
    fn redis_urls() {
        let u = parse_redis_url("redis://user:p%40ss@127.0.0.1:6390/3").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db, u.username.as_deref()), ("127.0.0.1", 6390, 3, Some("user")));
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert_eq!(u.to_string(), "redis://user:***@127.0.0.1:6390/3");
        assert!(!format!("{u:?}").contains("p@ss"));
        assert!(parse_redis_url("rediss://h:1").unwrap().tls);
        assert!(parse_redis_url("http://h:1").unwrap_err().contains("scheme `http`"));
        assert!(parse_redis_url("redis://h").unwrap_err().contains("no port"));
        assert!(parse_redis_url("redis://h:1/x").unwrap_err().contains("not a number"));
    }

    #[test]
    fn remote_urls() {
        assert_eq!(parse_remote_url("https://h:8443").unwrap().as_str(), "https://h:8443/");
        assert_eq!(parse_remote_url("https://h/webdis").unwrap().as_str(), "https://h/webdis/");
        assert!(parse_remote_url("ftp://h/").unwrap_err().contains("scheme `ftp`"));
        assert!(parse_remote_url("https://u:p@h/").unwrap_err().contains("basic_auth"));
    }

    #[test]
    fn link_names() {
        assert!(valid_link_name("site-a.sensors_1"));
        assert!(!valid_link_name(""));
        assert!(!valid_link_name("has space"));
        assert!(!valid_link_name(&"x".repeat(65)));
    }
}
