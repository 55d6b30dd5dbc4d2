//! serve's accept loop: HTTP/1.1 connections with a header timeout and a cap on how many are
//! open at once, which `axum::serve` has neither of.
//!
//! - A connection must send a complete request head within the header timeout, and the same
//!   timer runs while a kept-alive connection waits for its next request; a client that sends
//!   nothing, or a header a byte at a time (slow-loris), is closed when it runs out. A request
//!   whose head has arrived is not timed here: long-polls and uploads run as long as their
//!   routes allow.
//! - At most `max_connections` are open at once, and that stays below the open-file limit with
//!   [`RESERVED_FILES`] to spare, so that the store, blobs, fetches and imports always have
//!   descriptors however many sockets clients hold. A connection over the cap is closed at
//!   once (the client sees a reset and retries), never left in the backlog.
//! - When `accept` itself fails (the process is out of descriptors regardless), the loop waits
//!   a moment instead of spinning.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

/// Open files kept free of connections for everything else serve opens.
pub const RESERVED_FILES: u64 = 1024;

/// The default header timeout.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most connections serve holds on a machine with `open_files` descriptors, at most
/// `wanted`.
pub fn connection_cap(wanted: usize, open_files: u64) -> usize {
    let room = open_files.saturating_sub(RESERVED_FILES).max(16);
    wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// Serves `app` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    max_connections: usize,
) -> std::io::Result<()> {
    let open = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors or a connection reset before it was accepted: neither
                // is helped by trying again at once.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_the_rest() {
        assert_eq!(connection_cap(60_000, 65_536), 60_000);
        assert_eq!(connection_cap(60_000, 4_096), 3_072);
        assert_eq!(connection_cap(60_000, 1_024), 16);
    }
}
