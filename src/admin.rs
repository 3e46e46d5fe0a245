//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status`.
//!
//! Read-only views of [`HubState`]; the run loop starts it when
//! `admin.listen` is set and restarts it on another address when that
//! changes. It binds exactly the configured address (loopback unless the
//! operator says otherwise; `check` warns about non-loopback addresses).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::supervisor::HubState;

/// An admin address bound but not served yet: connections wait in the
/// backlog until [`AdminServer::serve`]. Binding first lets a reload refuse an
/// unusable address before it changes anything.
pub struct BoundAdmin {
    configured: SocketAddr,
    listener: TcpListener,
}

impl BoundAdmin {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<BoundAdmin> {
        Ok(BoundAdmin { configured: addr, listener: TcpListener::bind(addr).await? })
    }
}

/// A running admin server; dropping the handle does not stop it, `stop` does.
pub struct AdminServer {
    /// The address from the config.
    pub configured: SocketAddr,
    /// The address actually bound.
    pub addr: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves until stopped.
    pub async fn start(addr: SocketAddr, state: Arc<HubState>) -> std::io::Result<AdminServer> {
        AdminServer::serve(BoundAdmin::bind(addr).await?, state)
    }

    /// Serves a bound address until stopped.
    pub fn serve(bound: BoundAdmin, state: Arc<HubState>) -> std::io::Result<AdminServer> {
        let BoundAdmin { configured, listener } = bound;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(listener, state, cancel.clone()));
        tracing::info!(%addr, "admin server listening");
        Ok(AdminServer { configured, addr, cancel, task })
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

async fn serve(listener: TcpListener, state: Arc<HubState>, cancel: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "admin server: accept failed");
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let state = state.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &request)) }
            });
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

fn route(state: &HubState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", state.metrics.render()),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => {
            let reports = state.link_reports();
            let not_up: Vec<String> = reports
                .iter()
                .filter(|r| r.state != "up")
                .map(|r| {
                    format!(
                        "{}: {}{}",
                        r.name,
                        r.state,
                        r.last_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
                    )
                })
                .collect();
            if not_up.is_empty() {
                reply(StatusCode::OK, "text/plain", format!("ready: {} links up\n", reports.len()))
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready:\n{}\n", not_up.join("\n")))
            }
        }
        "/status" => {
            let config = state.config.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let body = serde_json::json!({ "config": config, "links": state.link_reports() });
            reply(StatusCode::OK, "application/json", format!("{body:#}\n"))
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz or /status\n".to_string(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}
