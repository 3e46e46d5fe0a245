//! The remote side: Webdis 0.1.9 behind an HTTPS proxy with mutual TLS.
//!
//! `codec` writes commands the only way Webdis reads every byte correctly,
//! `client` sends them over a shared keep-alive pool with timeouts and
//! classified errors, `stream` reads PSUBSCRIBE event streams.

pub mod client;
pub mod codec;
pub mod stream;

pub use client::{ClientOptions, WebdisClient, WebdisError};
