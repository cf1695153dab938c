//! The accept loop and each connection's watchdog.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection waits for its next
//! request, so it cannot tell a half-sent header from an idle socket; each connection here
//! instead keeps a small clock (when it went idle, when the next request's first bytes came,
//! how many of its requests are in flight) that a watchdog checks: a connection whose request
//! head is not complete `header_timeout` after its first byte, or that sat idle for
//! `idle_timeout`, is dropped, which closes the socket. Body reads are bounded in the router
//! (`--body-timeout`). A semaphore bounds open connections below the file-descriptor limit.

use axum::body::{Body, Bytes};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub header: Duration,
    pub idle: Duration,
}

struct Clock {
    in_flight: usize,
    idle_since: Instant,
    head_started: Option<Instant>,
}

type SharedClock = Arc<Mutex<Clock>>;

fn lock(c: &SharedClock) -> MutexGuard<'_, Clock> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// The socket, noting when bytes of a new request head arrive.
struct WatchedIo {
    inner: TcpStream,
    clock: SharedClock,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let mut c = lock(&this.clock);
            if c.in_flight == 0 && c.head_started.is_none() {
                c.head_started = Some(Instant::now());
            }
        }
        r
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request being handled, from its parsed head until its response body is sent or dropped.
struct InFlight(SharedClock);

impl InFlight {
    fn new(clock: SharedClock) -> Self {
        {
            let mut c = lock(&clock);
            c.in_flight += 1;
            c.head_started = None;
        }
        InFlight(clock)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut c = lock(&self.0);
        c.in_flight -= 1;
        if c.in_flight == 0 {
            c.idle_since = Instant::now();
            c.head_started = None;
        }
    }
}

/// A response body that keeps its request counted in flight until it is done.
struct Guarded {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Clone)]
struct Svc {
    app: TowerToHyperService<Router>,
    clock: SharedClock,
}

impl Service<Request<Incoming>> for Svc {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::new(self.clock.clone());
        let fut = self.app.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|b| {
                Body::new(Guarded {
                    inner: b,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// Whether the watchdog should close the connection now.
fn expired(clock: &SharedClock, limits: Limits) -> bool {
    let c = lock(clock);
    if c.in_flight > 0 {
        return false;
    }
    match c.head_started {
        Some(t) => t.elapsed() >= limits.header,
        None => c.idle_since.elapsed() >= limits.idle,
    }
}

async fn serve_conn(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let clock = Arc::new(Mutex::new(Clock {
        in_flight: 0,
        idle_since: Instant::now(),
        head_started: None,
    }));
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        clock: clock.clone(),
    });
    let svc = Svc {
        app: TowerToHyperService::new(app),
        clock: clock.clone(),
    };
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let tick = (limits.header.min(limits.idle) / 8)
        .clamp(Duration::from_millis(10), Duration::from_millis(500));
    let mut watchdog = tokio::time::interval(tick);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        if !draining && *stop.borrow() {
            // Idle connections close now; one with a request in flight after its response.
            draining = true;
            conn.as_mut().graceful_shutdown();
        }
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = watchdog.tick() => {
                if expired(&clock, limits) {
                    // Dropping the connection closes the socket.
                    return;
                }
            }
            r = stop.changed(), if !draining => {
                if r.is_err() {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Accepts connections until `stop` turns true; each connection holds one of `slots`' permits.
pub(super) async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    slots: Arc<Semaphore>,
) {
    loop {
        // The permit comes first: past the limit, connections wait in the kernel's backlog
        // instead of taking a file descriptor here.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait a little
                    // rather than spin.
                    eprintln!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        tokio::spawn(serve_conn(
            stream,
            app.clone(),
            limits,
            stop.clone(),
            permit,
        ));
    }
}

/// Connections the process can hold: its open-file limit less 64 descriptors kept for model
/// files, logs and the engine; `None` where unknown.
pub(super) fn descriptor_room() -> Option<usize> {
    #[cfg(unix)]
    {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit through a valid pointer.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0
            && r.rlim_cur != libc::RLIM_INFINITY
        {
            return Some((r.rlim_cur as usize).saturating_sub(64));
        }
        None
    }
    #[cfg(not(unix))]
    {
        None
    }
}
