//! Misbehaving remotes for fault tests: a TCP proxy that delays every
//! response ([`DelayProxy`]), and an HTTP server that answers garbage
//! ([`GarbageServer`]). Both run on threads of the test process, on free
//! loopback ports, and stop when dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Forwards TCP connections to `127.0.0.1:target`, holding every piece of
/// the server's answer for `delay` before passing it on (TLS passes through
/// untouched, so the client still talks to nginx with its certificate).
#[derive(Debug)]
pub struct DelayProxy {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    pub fn start(target: u16, delay: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the delay proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", target)) {
                            relay(client, server, delay, stopping.clone());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        DelayProxy { port, stop }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies client → server at once and server → client `delay` late.
fn relay(client: TcpStream, server: TcpStream, delay: Duration, stop: Arc<AtomicBool>) {
    let (Ok(mut client_read), Ok(mut server_write)) = (client.try_clone(), server.try_clone()) else { return };
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 << 10];
        while let Ok(n) = client_read.read(&mut buf) {
            if n == 0 || server_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = server_write.shutdown(Shutdown::Write);
    });
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let mut server_read = server;
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 << 10];
        while let Ok(n) = server_read.read(&mut buf) {
            if n == 0 || tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    let mut client_write = client;
    std::thread::spawn(move || {
        for (due, bytes) in rx {
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if stop.load(Ordering::Relaxed) || client_write.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = client_write.shutdown(Shutdown::Both);
    });
}

/// What a [`GarbageServer`] answers to every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Garbage {
    /// Random bytes instead of an HTTP response, then close.
    RandomBytes,
    /// HTTP 200 whose body is a truncated RESP reply.
    TruncatedResp,
    /// HTTP 200, chunked, announcing a huge chunk and trickling bytes forever.
    EndlessChunk,
    /// HTTP 200 with an HTML page as body.
    Html,
}

/// A plain-HTTP server on loopback that answers every request with [`Garbage`].
#[derive(Debug)]
pub struct GarbageServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl GarbageServer {
    pub fn start(kind: Garbage) -> GarbageServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the garbage server");
        let port = listener.local_addr().expect("address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        let stopping = stopping.clone();
                        std::thread::spawn(move || answer(stream, kind, seed, &stopping));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        GarbageServer { port, stop }
    }

    /// The URL a link points at (needs `insecure_plaintext: true`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for GarbageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(mut stream: TcpStream, kind: Garbage, mut seed: u64, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    // Read (and ignore) the request head and whatever body comes with it.
    let mut buf = [0u8; 64 << 10];
    let _ = stream.read(&mut buf);
    match kind {
        Garbage::RandomBytes => {
            let bytes: Vec<u8> = (0..4096)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = stream.write_all(&bytes);
        }
        Garbage::TruncatedResp => {
            let body = b"*4\r\n$3\r\nabc\r\n$10\r\nshort";
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: binary/octet-stream\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body));
        }
        Garbage::EndlessChunk => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: binary/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n7fffffff\r\n";
            if stream.write_all(head.as_bytes()).is_ok() {
                while !stop.load(Ordering::Relaxed) && stream.write_all(&[b'x'; 1024]).is_ok() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Garbage::Html => {
            let body = b"<html><head><title>Welcome</title></head><body>It works!</body></html>";
            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body));
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}
