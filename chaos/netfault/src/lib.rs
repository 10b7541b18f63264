//! netfault: a userspace TCP proxy between a client and a server on loopback that
//! makes the link misbehave the way thin and flaky uplinks do. The kernels our CI
//! runs on have no `netem`; this gives the same faults at the TCP level:
//!
//! - **latency**: every chunk, each way, waits `latency` before it is passed on;
//! - **stalls**: with probability `stall_percent`, a chunk waits `stall` more — what
//!   a lost packet looks like to a TCP peer (a retransmission timeout);
//! - **bandwidth**: a token bucket of `bytes_per_sec` per direction, over all
//!   connections;
//! - **black hole**: connections are accepted, bytes read and never passed on (and
//!   open connections stop passing anything);
//! - **reset**: connections are reset (RST) after `reset_after` bytes;
//! - **refuse**: new connections are reset at once;
//! - **flapping**: `up` of normal service, then `down` of resets, in turn.
//!
//! The faults can be changed while connections are open ([`Proxy::set`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the link does now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    pub latency: Duration,
    pub stall_percent: u8,
    pub stall: Duration,
    /// Per direction; 0: no cap.
    pub bytes_per_sec: u64,
    pub black_hole: bool,
    /// Swallow only what the server sends: requests arrive, their answers are lost.
    pub black_hole_down: bool,
    /// Reset a connection after this many bytes (either way); 0: never.
    pub reset_after: u64,
    pub refuse: bool,
    /// (up, down): alternate normal service and resets.
    pub flap: Option<(Duration, Duration)>,
}

/// Counters, for the tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub resets: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

struct Bucket {
    rate: u64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// How long to wait before `n` bytes may pass.
    fn take(&mut self, n: usize, rate: u64) -> Duration {
        if rate == 0 {
            return Duration::ZERO;
        }
        if self.rate != rate {
            self.rate = rate;
            self.tokens = 0.0;
            self.at = Instant::now();
        }
        let now = Instant::now();
        let burst = (rate as f64 / 10.0).max(16.0 * 1024.0);
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * rate as f64).min(burst);
        self.at = now;
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate as f64)
        }
    }
}

/// A running proxy. Dropping it stops accepting (open connections end with it).
pub struct Proxy {
    pub addr: SocketAddr,
    faults: watch::Sender<Faults>,
    pub stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::serve(listener, upstream)
    }

    /// Forwards connections accepted on `listener` to `upstream`.
    pub fn serve(listener: TcpListener, upstream: SocketAddr) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(Faults::default());
        let stats = Arc::new(Stats::default());
        let buckets = Arc::new([
            Mutex::new(Bucket {
                rate: 0,
                tokens: 0.0,
                at: Instant::now(),
            }),
            Mutex::new(Bucket {
                rate: 0,
                tokens: 0.0,
                at: Instant::now(),
            }),
        ]);
        let started = Instant::now();
        let st = stats.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::Relaxed);
                let f = rx.borrow().clone();
                if f.refuse || flapped_down(&f, started) {
                    reset(client);
                    st.resets.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let (rx, st, buckets) = (rx.clone(), st.clone(), buckets.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        reset(client);
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    pump(client, server, rx, st, buckets, started).await;
                });
            }
        });
        Ok(Self {
            addr,
            faults: tx,
            stats,
            task,
        })
    }

    pub fn set(&self, f: Faults) {
        let _ = self.faults.send(f);
    }

    pub fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn flapped_down(f: &Faults, started: Instant) -> bool {
    match f.flap {
        Some((up, down)) if !(up + down).is_zero() => {
            let period = (up + down).as_millis().max(1);
            started.elapsed().as_millis() % period >= up.as_millis()
        }
        _ => false,
    }
}

/// Closes with RST (linger 0).
#[allow(deprecated)] // zero linger: an immediate RST, nothing blocks
fn reset(s: TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
}

async fn pump(
    client: TcpStream,
    server: TcpStream,
    faults: watch::Receiver<Faults>,
    stats: Arc<Stats>,
    buckets: Arc<[Mutex<Bucket>; 2]>,
    started: Instant,
) {
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let total = Arc::new(AtomicU64::new(0));
    let dead = Arc::new(tokio::sync::Notify::new());
    let up = tokio::spawn(direction(
        cr,
        sw,
        faults.clone(),
        stats.clone(),
        buckets.clone(),
        0,
        total.clone(),
        dead.clone(),
        started,
    ));
    let down = tokio::spawn(direction(
        sr,
        cw,
        faults,
        stats.clone(),
        buckets,
        1,
        total,
        dead.clone(),
        started,
    ));
    let (a, b) = tokio::join!(up, down);
    let reset_needed = matches!(a, Ok(Some(true))) || matches!(b, Ok(Some(true)));
    if reset_needed {
        stats.resets.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies one way; returns Some(true) if it reset the connection.
#[allow(clippy::too_many_arguments)]
async fn direction(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: watch::Receiver<Faults>,
    stats: Arc<Stats>,
    buckets: Arc<[Mutex<Bucket>; 2]>,
    which: usize,
    total: Arc<AtomicU64>,
    dead: Arc<tokio::sync::Notify>,
    started: Instant,
) -> Option<bool> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return Some(false);
                }
                Ok(n) => n,
            },
            _ = dead.notified() => return Some(true),
        };
        let f = faults.borrow().clone();
        if f.black_hole || (which == 1 && f.black_hole_down) {
            continue; // swallowed
        }
        let so_far = total.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if (f.reset_after > 0 && so_far >= f.reset_after) || flapped_down(&f, started) || f.refuse {
            dead.notify_waiters();
            let s = to.reunite(from).ok();
            if let Some(s) = s {
                reset(s);
            }
            return Some(true);
        }
        let mut wait = f.latency;
        if f.stall_percent > 0 && fastrand::u8(0..100) < f.stall_percent {
            wait += f.stall;
        }
        wait += buckets[which].lock().unwrap().take(n, f.bytes_per_sec);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return Some(false);
        }
        let counter = if which == 0 {
            &stats.bytes_up
        } else {
            &stats.bytes_down
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}
