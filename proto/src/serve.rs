//! The HTTP/1 server of every service port (the broker's MCP endpoint, the
//! billing API): hyper directly, because `axum::serve` sets neither a
//! header-read timeout nor a connection limit, nor TCP_NODELAY.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;

/// Limits of the HTTP servers against slow and greedy clients.
pub mod limits {
    use std::time::Duration;

    /// A client must send a request's headers within this long of opening
    /// the connection or of its previous request (slowloris). hyper's timer
    /// also runs while a keep-alive connection is idle, so this closes idle
    /// connections too: it is hyper's own default, long enough that a
    /// client rarely reuses a connection just as it closes.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
    /// Connections served at once; beyond it new connections are closed at
    /// once.
    pub const MAX_CONNECTIONS: usize = 1024;
    /// How long a graceful stop waits for open requests.
    pub const DRAIN: Duration = Duration::from_secs(10);
}

/// Serves `app` on `listener` with hyper's HTTP/1 server: TCP_NODELAY on
/// every socket (`axum::serve` leaves Nagle's algorithm on, which costs
/// keep-alive clients tens of milliseconds per call), a header-read timeout,
/// a connection limit, and a bounded graceful stop.
pub async fn http1(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits::MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits::HEADER_READ_TIMEOUT)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = limits::MAX_CONNECTIONS,
                "connection limit reached: closing a new connection"
            );
            drop(tcp);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits::DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still open after the drain period; stopping anyway");
    }
}
