//! replhub: replicates Redis key namespaces between local Redis instances and
//! a remote Redis reachable only through Webdis behind an mTLS HTTPS proxy.

pub mod admin;
pub mod backoff;
pub mod check;
pub mod config;
pub mod echo;
pub mod link;
pub mod local;
pub mod metrics;
pub mod notify_flags;
pub mod remote;
pub mod resp;
pub mod run;
pub mod scripts;
pub mod side;
pub mod supervisor;
pub mod timefmt;
pub mod tls;
pub mod webdis;
