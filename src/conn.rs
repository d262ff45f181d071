//! Connection limits of both listeners: how many connections each holds,
//! how long a peer may take to say what it wants, and the file descriptors
//! kept in reserve so that a flood of one listener never starves the other
//! (or the database).
//!
//! - Each listener holds at most [`Limits::max_connections`] connections. A
//!   new one past that first evicts the oldest connection that has not sent
//!   a complete request yet (a half-sent or silent one); if there is none,
//!   it waits in the kernel's backlog, which costs the process nothing.
//! - A peer has [`Limits::header_timeout`] to send its request headers
//!   (HTTP) or its connection preface (gRPC), and an HTTP connection idle
//!   between requests is closed after the same time.
//! - At start the process raises its descriptor limit to the hard limit, and
//!   lowers the per-listener limit so that both listeners together still
//!   leave [`FD_RESERVE`] descriptors for the database and everything else.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Descriptors left to the database, log files and the rest when the
/// listeners' limits are fitted to the process's descriptor limit.
pub const FD_RESERVE: u64 = 512;

/// Default of [`Limits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default of [`Limits::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections held at once (`--max-connections`).
    pub max_connections: usize,
    /// Time to send request headers or the HTTP/2 preface, and longest idle
    /// time between HTTP requests (`--header-timeout-secs`).
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }
}

impl Limits {
    /// These limits, with `max_connections` lowered so that `listeners`
    /// listeners at their limit leave [`FD_RESERVE`] descriptors free; the
    /// process's soft descriptor limit is raised to its hard limit first.
    pub fn fitted(self, listeners: u64) -> Self {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            let raised = rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                limit = raised;
            }
        }
        let Some(fds) = limit.current else {
            return self;
        };
        let room = fds.saturating_sub(FD_RESERVE) / listeners.max(1);
        let fitted = usize::try_from(room).unwrap_or(usize::MAX).max(16);
        if fitted < self.max_connections {
            tracing::warn!(
                requested = self.max_connections,
                fitted,
                fds,
                "--max-connections lowered to fit the descriptor limit"
            );
        }
        Self {
            max_connections: self.max_connections.min(fitted),
            ..self
        }
    }
}

/// One connection's place among a listener's [`Slots`].
struct Entry {
    /// Set once the connection has sent a complete request.
    served: Arc<AtomicBool>,
    /// Cancelled to evict the connection, and by the connection as it ends.
    evict: CancellationToken,
}

/// The connection slots of one listener (see the module docs).
pub struct Slots {
    permits: Arc<Semaphore>,
    max: usize,
    waiting: Mutex<VecDeque<Entry>>,
}

/// A connection's slot: held for as long as the connection lives.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    /// Mark with [`Slot::served`] once a request is complete.
    served: Arc<AtomicBool>,
    /// Cancelled when the connection is to be evicted.
    pub evict: CancellationToken,
}

impl Slot {
    /// The connection has sent a complete request: it is no longer evicted
    /// to make room.
    pub fn served(&self) -> Arc<AtomicBool> {
        self.served.clone()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Tells the eviction queue the connection is gone.
        self.evict.cancel();
    }
}

impl Slots {
    /// Room for `max` connections.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            waiting: Mutex::new(VecDeque::new()),
        }
    }

    /// A slot for the next connection: at once when there is room, else
    /// after evicting the oldest connection that sent no complete request,
    /// else when one closes.
    pub async fn acquire(&self) -> Option<Slot> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.evict_one();
                self.permits.clone().acquire_owned().await.ok()?
            }
        };
        let served = Arc::new(AtomicBool::new(false));
        let evict = CancellationToken::new();
        if let Ok(mut waiting) = self.waiting.lock() {
            // Served and closed connections leave the queue lazily.
            if waiting.len() >= 2 * self.max {
                waiting.retain(|e| !e.served.load(Ordering::Relaxed) && !e.evict.is_cancelled());
            }
            waiting.push_back(Entry {
                served: served.clone(),
                evict: evict.clone(),
            });
        }
        Some(Slot {
            _permit: permit,
            served,
            evict,
        })
    }

    fn evict_one(&self) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        while let Some(entry) = waiting.pop_front() {
            if !entry.served.load(Ordering::Relaxed) && !entry.evict.is_cancelled() {
                tracing::debug!("connection limit reached: closing the oldest silent connection");
                entry.evict.cancel();
                return;
            }
        }
    }
}

/// A gRPC connection holding its [`Slot`], which must send the 24-byte
/// HTTP/2 preface within the header timeout.
pub struct Limited {
    tcp: TcpStream,
    slot: Slot,
    preface_left: usize,
    /// Until the preface is complete: its deadline, and the eviction.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    evicted: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
}

impl Limited {
    /// Wraps an accepted connection.
    pub fn new(tcp: TcpStream, slot: Slot, header_timeout: Duration) -> Self {
        let evicted = Some(Box::pin(slot.evict.clone().cancelled_owned()));
        Self {
            tcp,
            slot,
            preface_left: 24,
            deadline: Some(Box::pin(tokio::time::sleep(header_timeout))),
            evicted,
        }
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                this.preface_left = this.preface_left.saturating_sub(read);
                if this.preface_left == 0 && this.deadline.take().is_some() {
                    this.evicted = None;
                    this.slot.served.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                // A peer that never says what it wants holds a slot and a
                // descriptor for nothing: it goes at its deadline, or
                // earlier when a new connection needs its slot.
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                let evicted = this
                    .evicted
                    .as_mut()
                    .is_some_and(|e| e.as_mut().poll(cx).is_ready());
                if expired || evicted {
                    return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Limited {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}
