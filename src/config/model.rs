//! The config file's shape: the raw structs serde deserializes and schemars
//! turns into the JSON Schema (`replhub schema`). They are the single source
//! of truth for which keys exist and what type each has; the loader checks a
//! file against the schema generated from them before it deserializes
//! anything (see `schema_check`), and `validate` turns them into runtime types.
//!
//! Every link setting is optional here because `defaults` may provide it; the
//! validator reports what is still missing after the merge.

use schemars::JsonSchema;
use serde::Deserialize;

/// A replhub config file (version 1).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "replhub configuration")]
pub struct RawConfig {
    /// Format version of this file; must be 1.
    pub version: i64,
    /// The admin HTTP server (/metrics, /healthz, /readyz, /status); none when absent.
    pub admin: Option<RawAdmin>,
    /// Settings every link inherits (deep merge; a link's own keys win; `null` on a link unsets an inherited key).
    pub defaults: Option<RawLinkSettings>,
    /// The replication links this process runs.
    pub links: Vec<RawLink>,
    /// On SIGTERM/SIGINT, how long in-flight copies may take before the process exits anyway (default "10s").
    pub shutdown_timeout: Option<DurationText>,
    /// Directory where `both` links keep their base digests across restarts (relative to this file).
    pub state_dir: Option<String>,
}

/// The admin HTTP server.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address to listen on, e.g. "127.0.0.1:9750". Binds loopback unless you say otherwise.
    pub listen: String,
}

/// One link: a local namespace replicated to or from a remote namespace.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(extend("additionalProperties" = false))]
pub struct RawLink {
    /// Unique name of the link: 1 to 64 characters from A-Z a-z 0-9 _ . -
    pub name: String,
    #[serde(flatten)]
    pub settings: RawLinkSettings,
}

/// Everything a link sets besides its name; also the shape of `defaults`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLinkSettings {
    /// push (local → remote), pull (remote → local) or both.
    pub direction: Option<Direction>,
    /// The local Redis side.
    pub local: Option<RawLocal>,
    /// The remote side: Webdis behind an HTTPS proxy with mutual TLS.
    pub remote: Option<RawRemote>,
    /// Data types to replicate (default: all five). Keys of other types are left alone.
    pub types: Option<Vec<DataType>>,
    /// For direction both: which side wins a conflicting concurrent write (default remote_wins).
    pub conflict: Option<Conflict>,
    /// For pull and both links: the end-to-end check of the remote event stream.
    pub heartbeat: Option<RawHeartbeat>,
    /// Periodic anti-entropy resync ("0s" = only after reconnects; default "10m").
    pub resync_interval: Option<DurationText>,
    /// A resync that would delete more than this share of the destination namespace is refused (default 0.5).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_delete_fraction: Option<f64>,
}

/// The local Redis side of a link.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLocal {
    /// redis://[user[:password]@]host:port[/db], or rediss:// for TLS.
    pub url: Option<String>,
    /// The replicated namespace: every key starting with this prefix. Required, non-empty.
    pub prefix: Option<String>,
    /// TLS files for rediss:// (cert and key only when the server wants client certificates).
    pub tls: Option<RawTls>,
}

/// The remote side of a link.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRemote {
    /// Base URL of the HTTPS proxy in front of Webdis; a path prefix is allowed.
    pub url: Option<String>,
    /// The remote namespace (default: the local prefix). Key local.prefix+s ↔ remote.prefix+s.
    pub prefix: Option<String>,
    /// Mutual TLS files; required for https://.
    pub tls: Option<RawTls>,
    /// HTTP basic auth for Webdis ACLs.
    pub basic_auth: Option<RawBasicAuth>,
    /// The database Webdis is configured with (its "database" setting); names the keyspace channel. Default 0.
    #[schemars(range(min = 0, max = 65535))]
    pub db: Option<i64>,
    /// Allow an http:// URL (no TLS). For tests on loopback only.
    pub insecure_plaintext: Option<bool>,
}

/// TLS files (PEM). Relative paths resolve against the config file's directory.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// CA certificate(s) the server's certificate must chain to.
    pub ca: Option<String>,
    /// Client certificate (chain).
    pub cert: Option<String>,
    /// Private key of the client certificate.
    pub key: Option<String>,
}

/// HTTP basic auth credentials.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    pub user: Option<String>,
    /// Use ${ENV_VAR} rather than writing the password into the file.
    pub password: Option<String>,
}

/// Heartbeat of the remote event stream.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHeartbeat {
    /// How often the heartbeat key is written (default "3s").
    pub interval: Option<DurationText>,
    /// How long without a heartbeat event before the stream counts as dead (default "15s").
    pub timeout: Option<DurationText>,
}

/// Direction of replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// local → remote
    Push,
    /// remote → local
    Pull,
    /// both ways; conflicts resolved by `conflict`
    Both,
}

/// A Redis data type replhub replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    String,
    Hash,
    List,
    Set,
    Zset,
}

/// Which side wins a conflict in a `both` link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Conflict {
    RemoteWins,
    LocalWins,
}

/// A duration written as a string: "500ms", "15s", "10m", "1h", or a sum such as "1m30s".
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct DurationText(#[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))] pub String);

/// The JSON Schema (draft 2020-12) of the config file.
pub fn schema() -> serde_json::Value {
    let schema = schemars::schema_for!(RawConfig);
    serde_json::to_value(schema).unwrap_or_default()
}

/// The schema as `replhub schema` prints it and `schemas/replhub.schema.json` stores it.
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    text.push('\n');
    text
}
