//! The reference: a bare client sending one HTTP request per key (`SET`)
//! over 8 keep-alive connections with the client certificate, as the
//! brief's reference measured it. No batching, one request in flight per
//! connection. Written with the same hyper and rustls the hub uses, so the
//! comparison is about the method, not the libraries.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use replhub::config::tls_files::{TlsPaths, load_client_tls};
use replhub::webdis::codec;

use crate::support::stack::Stack;

/// Writes `keys` keys through nginx → Webdis, one request each, over
/// `connections` connections. Returns the elapsed time.
pub fn one_request_per_key(stack: &Stack, prefix: &str, keys: usize, value: &[u8], connections: usize) -> Duration {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let site = stack.pki().client(crate::support::pki::SITE_A);
    let paths =
        TlsPaths { ca: Some(stack.pki().ca_cert()), cert: Some(site.cert.clone()), key: Some(site.key.clone()) };
    let (material, _) = load_client_tls(&paths, std::time::SystemTime::now()).expect("stack TLS files");
    let config = Arc::new(replhub::tls::client_config(material).expect("rustls config"));
    let port = stack.nginx().port();
    let next = Arc::new(AtomicUsize::new(0));
    let value = Bytes::copy_from_slice(value);
    let prefix = prefix.to_string();
    runtime.block_on(async move {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let (config, next, value, prefix) = (config.clone(), next.clone(), value.clone(), prefix.clone());
            tasks.spawn(async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect to nginx");
                tcp.set_nodelay(true).expect("nodelay");
                let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
                let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.expect("TLS handshake");
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("HTTP handshake");
                tokio::spawn(connection);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys {
                        return;
                    }
                    let key = format!("{prefix}{i}");
                    let body = codec::command_body("SET", &[key.as_bytes(), &value]);
                    let request = http::Request::post("/")
                        .header(http::header::HOST, "localhost")
                        .body(Full::new(Bytes::from(body)))
                        .expect("request");
                    let response = sender.send_request(request).await.expect("request failed");
                    assert_eq!(response.status(), 200);
                    let _ = response.into_body().collect().await.expect("body");
                }
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.expect("reference client task");
        }
        started.elapsed()
    })
}
