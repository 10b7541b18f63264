//! The proxy does what it says, measured on loopback.

use std::time::{Duration, Instant};

use netfault::{Faults, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server.
async fn echo() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn round_trip(addr: std::net::SocketAddr, bytes: usize) -> std::io::Result<Duration> {
    let mut s = TcpStream::connect(addr).await?;
    let started = Instant::now();
    let data = vec![7u8; bytes];
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await?;
        Ok::<_, std::io::Error>(())
    };
    let recv = async {
        let mut got = vec![0u8; bytes];
        r.read_exact(&mut got).await?;
        assert!(got.iter().all(|&b| b == 7));
        Ok::<_, std::io::Error>(())
    };
    let (a, b) = tokio::join!(send, recv);
    a?;
    b?;
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_bandwidth_black_holes_and_resets() {
    let p = Proxy::start(echo().await).await.unwrap();
    assert!(round_trip(p.addr, 1000).await.unwrap() < Duration::from_millis(200));

    p.set(Faults {
        latency: Duration::from_millis(150),
        ..Default::default()
    });
    let t = round_trip(p.addr, 100).await.unwrap();
    assert!(t >= Duration::from_millis(300), "two ways of 150 ms: {t:?}");

    // 200 KiB/s each way: 400 KiB echoed take about 2 s.
    p.set(Faults {
        bytes_per_sec: 200 * 1024,
        ..Default::default()
    });
    let t = round_trip(p.addr, 400 * 1024).await.unwrap();
    assert!(
        t >= Duration::from_millis(1500) && t < Duration::from_secs(6),
        "{t:?}"
    );

    p.set(Faults {
        black_hole: true,
        ..Default::default()
    });
    let r = tokio::time::timeout(Duration::from_millis(500), round_trip(p.addr, 10)).await;
    assert!(r.is_err(), "a black hole never answers");

    p.set(Faults {
        reset_after: 1000,
        ..Default::default()
    });
    let err = round_trip(p.addr, 100_000).await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );

    p.set(Faults {
        refuse: true,
        ..Default::default()
    });
    assert!(round_trip(p.addr, 10).await.is_err());
    assert!(p.stats.resets.load(std::sync::atomic::Ordering::Relaxed) >= 2);

    p.set(Faults::default());
    assert!(round_trip(p.addr, 1000).await.is_ok(), "back to normal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_black_hole_delivers_requests_and_loses_answers() {
    // An echo server that counts what reaches it.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    let arrived = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = arrived.clone();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 1024];
        while let Ok(n) = s.read(&mut buf).await {
            seen.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let p = Proxy::start(upstream).await.unwrap();
    p.set(Faults {
        black_hole_down: true,
        ..Default::default()
    });
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"0123456789").await.unwrap();
    let mut got = [0u8; 10];
    let r = tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut got)).await;
    assert!(r.is_err(), "the answer is lost");
    assert_eq!(
        arrived.load(std::sync::atomic::Ordering::SeqCst),
        10,
        "the request arrived"
    );
    p.set(Faults::default());
    s.write_all(b"abc").await.unwrap();
    let mut back = [0u8; 3];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"abc", "healed: answers pass again");
}
