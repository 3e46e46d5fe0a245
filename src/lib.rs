//! replhub: replicates Redis key namespaces between local Redis instances and
//! a remote Redis reachable only through Webdis behind an mTLS HTTPS proxy.

pub mod resp;
