//! The server's connections: accepted up to a cap (a connection over it is answered 503 with Retry-After
//! and closed), each served over HTTP/1.1 by hyper with a deadline for a request's headers, which also
//! closes a keep-alive connection left idle that long, and asked on shutdown to close after its current
//! request.
use crate::commands::serve::worker::Stats;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Refused connections held open at once until their client has read the answer; past that a refused
/// connection is answered and closed at once, so that a flood of connections cannot hold more than the cap
/// plus these.
const REFUSALS: usize = 256;

/// How long a refused connection is given to take its answer.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// The open connections: at most `cap`, and a way to ask them all to close.
pub(super) struct Connections {
    open: Arc<Semaphore>,
    cap: usize,
    header_timeout: Duration,
    closing: watch::Sender<bool>,
}

impl Connections {
    pub(super) fn new(cap: usize, header_timeout: Duration) -> Self {
        Connections { open: Arc::new(Semaphore::new(cap)), cap, header_timeout, closing: watch::Sender::new(false) }
    }

    /// Connections open now.
    pub(super) fn count(&self) -> usize {
        self.cap - self.open.available_permits()
    }

    /// Accepts connections and serves each with `app` until `stop` resolves; then stops accepting (the
    /// listener is closed) and asks every open connection to close once its current request is answered.
    pub(super) async fn accept(
        &self,
        listener: TcpListener,
        app: Router,
        stats: Arc<Stats>,
        stop: impl Future<Output = ()>,
    ) {
        let refusals = Arc::new(Semaphore::new(REFUSALS));
        tokio::pin!(stop);
        loop {
            let tcp = tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    // Out of file descriptors, or a connection reset before it was accepted: wait a little
                    // rather than spin, and go on.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            match self.open.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (service, closing) = (TowerToHyperService::new(app.clone()), self.closing.subscribe());
                    tokio::spawn(serve_one(tcp, service, self.header_timeout, closing, permit));
                }
                Err(_) => {
                    stats.refused_connections.fetch_add(1, Ordering::Relaxed);
                    match refusals.clone().try_acquire_owned() {
                        Ok(permit) => drop(tokio::spawn(refuse(tcp, permit))),
                        Err(_) => refuse_now(tcp),
                    }
                }
            }
        }
        drop(listener);
        self.closing.send_replace(true);
    }

    /// Resolves once every connection is closed.
    pub(super) async fn closed(&self) {
        let _ = self.open.acquire_many(self.cap as u32).await;
    }
}

/// Serves one connection until it closes (or, once `closing` turns true, until its current request is
/// answered); `_permit` is its place under the cap.
async fn serve_one(
    tcp: TcpStream,
    service: TowerToHyperService<Router>,
    header_timeout: Duration,
    mut closing: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let connection = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = closing.wait_for(|closing| *closing) => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}

/// The answer to a connection over the cap: 503 with Retry-After, in JSON as every error.
fn refusal() -> String {
    let body = r#"{"error":"the server has too many open connections: retry shortly","field":null}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Answers a connection over the cap with [`refusal`] and closes it once the client has had the answer (its
/// request is read and dropped, for at most [`REFUSAL_TIME`]): closing with unread bytes would reset the
/// connection, and the client might lose the answer.
async fn refuse(mut tcp: TcpStream, _permit: OwnedSemaphorePermit) {
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        tcp.write_all(refusal().as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// [`refuse`] without waiting, for when [`REFUSALS`] already wait: what the client has sent so far is read
/// and dropped, the answer written (a fresh connection's buffer takes it whole) and the connection closed.
fn refuse_now(tcp: TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(tcp.try_read(&mut sink), Ok(n) if n > 0) {}
    let _ = tcp.try_write(refusal().as_bytes());
}
