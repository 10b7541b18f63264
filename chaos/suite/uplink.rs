//! A flaky uplink: latency, stalls, a black hole, resets, refusals and flapping
//! through our userspace TCP fault proxy; and a thin one, capped by the kernel's
//! `tbf` qdisc on a veth pair into a network namespace of our own.

use std::time::{Duration, Instant};

use faultfs::harness::MountOptions;
use netfault::{Faults, Proxy};

use crate::edge::Edge;
use crate::load::{self, Expect, Load, MayLose};
use crate::support::backend::{Backend, Kind};
use crate::support::spool::Dest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_uplink_loses_nothing() {
    let name = "a_flaky_uplink_loses_nothing";
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let g = Backend::start(Kind::Grpc).await;
    let h = Backend::start(Kind::Http).await;
    let pg = Proxy::start(g.addr).await.unwrap();
    let ph = Proxy::start(h.addr).await.unwrap();
    let dests = [
        Dest::new("grpc-sink", &format!("http://{}", pg.addr), "grpc"),
        Dest::new(
            "http-sink",
            &format!("http://{}/v1/traces", ph.addr),
            "http",
        ),
    ];
    let mut edge = Edge::new(
        dir.path(),
        "segment_bytes = \"64KiB\"\nmax_bytes = \"16MiB\"",
        &dests,
        MountOptions::default(),
    );
    edge.power_on();
    let load = Load::start(dir.path(), &edge.spool, 1, 1, 20, 0.01);
    let ms = Duration::from_millis;
    let phases = [
        (
            "latency",
            Faults {
                latency: ms(150),
                ..Default::default()
            },
        ),
        (
            "stalls",
            Faults {
                stall_percent: 20,
                stall: ms(700),
                ..Default::default()
            },
        ),
        (
            "black hole",
            Faults {
                black_hole: true,
                ..Default::default()
            },
        ),
        (
            "resets",
            Faults {
                reset_after: 40_000,
                ..Default::default()
            },
        ),
        (
            "refused",
            Faults {
                refuse: true,
                ..Default::default()
            },
        ),
        (
            "flapping",
            Faults {
                flap: Some((ms(700), ms(700))),
                ..Default::default()
            },
        ),
        (
            "thin",
            Faults {
                bytes_per_sec: 64 * 1024,
                ..Default::default()
            },
        ),
    ];
    let each = Duration::from_millis(crate::knob("uplink_phase_ms", 2500, 30_000) as u64);
    for (label, f) in &phases {
        edge.spool.note(&format!("uplink: {label}"));
        pg.set(f.clone());
        ph.set(f.clone());
        tokio::time::sleep(each).await;
    }
    pg.set(Faults::default());
    ph.set(Faults::default());
    let results = load.finish();
    load::check(
        &edge.spool,
        &[(&g, "grpc-sink"), (&h, "http-sink")],
        &results,
        Expect {
            scenario: name,
            cycles: phases.len() as u32,
            started,
            may_lose: MayLose::Nothing,
            max_redelivered: None,
        },
    )
    .await;
    edge.shutdown();
}

/// A network namespace with a veth pair whose host side is shaped by `tbf`.
struct Netns {
    name: String,
    host_if: String,
    pub peer_ip: String,
}

impl Netns {
    /// A namespace for `scenario`, or `None` after saying why there is none (a
    /// panic where `TRACESPOOL_REQUIRE_NETNS` is set).
    fn for_scenario(scenario: &str, rate: &str) -> Option<Self> {
        match Self::create(rate) {
            Ok(ns) => Some(ns),
            Err(e) => {
                if std::env::var("TRACESPOOL_REQUIRE_NETNS").is_ok() {
                    panic!("{scenario}: network namespaces are required here: {e}");
                }
                println!("SKIPPED {scenario}: cannot make a network namespace with tbf: {e}");
                None
            }
        }
    }

    fn create(rate: &str) -> Result<Self, String> {
        let id = std::process::id() % 200 + 20;
        let name = format!("tsp-chaos-{}", std::process::id());
        let host_if = format!("tspv{}a", std::process::id() % 100_000);
        let peer_if = format!("tspv{}b", std::process::id() % 100_000);
        let host_ip = format!("10.251.{id}.1");
        let peer_ip = format!("10.251.{id}.2");
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        ip(&["netns", "add", &name])?;
        let ns = Self {
            name: name.clone(),
            host_if: host_if.clone(),
            peer_ip: peer_ip.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ])?;
        ip(&["link", "set", &peer_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{peer_ip}/30"),
            "dev",
            &peer_if,
        ])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", &peer_if, "up"])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        let tc = std::process::Command::new("tc")
            .args([
                "qdisc", "add", "dev", &host_if, "root", "tbf", "rate", rate, "burst", "32kbit",
                "latency", "400ms",
            ])
            .output()
            .map_err(|e| format!("tc: {e}"))?;
        if !tc.status.success() {
            return Err(format!("tc: {}", String::from_utf8_lossy(&tc.stderr)));
        }
        Ok(ns)
    }

    /// A listener bound inside the namespace (a socket stays in the namespace it
    /// was made in).
    fn listen(&self, port: u16) -> std::io::Result<std::net::TcpListener> {
        let path = format!("/var/run/netns/{}", self.name);
        let addr = format!("{}:{port}", self.peer_ip);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&path)?;
            if unsafe { setns(f.as_raw_fd(), 0x4000_0000) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            std::net::TcpListener::bind(addr)
        })
        .join()
        .unwrap()
    }
}

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thin_uplink_capped_by_tbf_delivers_everything_within_the_cap() {
    let name = "a_thin_uplink_capped_by_tbf_delivers_everything_within_the_cap";
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let Some(ns) = Netns::for_scenario(name, "2mbit") else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let g = Backend::start_on(Kind::Grpc, ns.listen(4317).unwrap());
    let h = Backend::start_on(Kind::Http, ns.listen(4318).unwrap());
    let dests = [
        Dest::new("grpc-sink", &format!("http://{}:4317", ns.peer_ip), "grpc").timeout("20s"),
        Dest::new(
            "http-sink",
            &format!("http://{}:4318/v1/traces", ns.peer_ip),
            "http",
        )
        .timeout("20s"),
    ];
    let mut edge = Edge::new(
        dir.path(),
        "segment_bytes = \"64KiB\"\nmax_bytes = \"16MiB\"",
        &dests,
        MountOptions::default(),
    );
    edge.power_on();
    let load = Load::start(dir.path(), &edge.spool, 1, 1, 20, 0.02);
    tokio::time::sleep(Duration::from_secs(crate::knob("tbf_secs", 6, 120) as u64)).await;
    let results = load.finish();
    let outcome = load::check(
        &edge.spool,
        &[(&g, "grpc-sink"), (&h, "http-sink")],
        &results,
        Expect {
            scenario: name,
            cycles: 1,
            started,
            may_lose: MayLose::Nothing,
            max_redelivered: None,
        },
    )
    .await;
    // What crossed the link stayed within 2 Mbit/s (both destinations share it).
    let bytes = g.attempt_bytes() + h.attempt_bytes();
    let rate = bytes as f64 * 8.0 / outcome.seconds;
    println!(
        "{name}: {bytes} request bytes in {:.1} s = {:.2} Mbit/s",
        outcome.seconds,
        rate / 1e6
    );
    assert!(rate <= 2.2e6, "{name}: {rate} bit/s over a 2 Mbit/s link");
    edge.shutdown();
}

/// The catch-up over a thin uplink: a backlog left by an outage drains under an
/// egress limit below the link's 2 Mbit/s, and fresh spans sent meanwhile still
/// arrive within 2 s (the live lane goes first; the limit keeps the link's queue
/// short, so nothing waits behind the backlog in it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thin_uplink_catching_up_stays_within_it_and_sends_fresh_spans_first() {
    let name = "a_thin_uplink_catching_up_stays_within_it_and_sends_fresh_spans_first";
    let Some(_serial) = crate::can_run(name) else {
        return;
    };
    let Some(ns) = Netns::for_scenario(name, "2mbit") else {
        return;
    };
    use crate::support::{backend::Mode, raw};
    let dir = tempfile::tempdir().unwrap();
    let h = Backend::start_on(Kind::Http, ns.listen(4318).unwrap());
    h.lean();
    h.set_mode(Mode::Unavailable);
    let dests = [Dest::new(
        "http-sink",
        &format!("http://{}:4318/v1/traces", ns.peer_ip),
        "http",
    )
    .timeout("20s")
    .with("live_first = true\nlive_lag = \"1s\"\nmax_egress_bytes_per_s = \"200KiB\"\negress_burst = \"32KiB\"")];
    let mut edge = Edge::new(
        dir.path(),
        "max_bytes = \"64MiB\"",
        &dests,
        MountOptions::default(),
    );
    edge.power_on();
    let endpoint = edge.spool.grpc_endpoint();
    // The outage: 4 MB of backlog, 20 s at the limit.
    let mut old = 0usize;
    for i in 0..300u64 {
        let (body, _) = raw::realistic(64, 50_000 + i);
        raw::grpc_export(&endpoint, body, None).await.unwrap();
        old += 64;
    }
    h.set_mode(Mode::Accept);
    let returned = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut fresh = Vec::new();
    for i in 0..4u64 {
        let (body, ids) = raw::realistic(8, 90_000 + i);
        let sent = Instant::now();
        raw::grpc_export(&endpoint, body, None).await.unwrap();
        fresh.push((sent, ids[0].clone()));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let arrived = |id: &str| h.arrival_of(id);
    let mut last_fresh = returned;
    for (sent, id) in &fresh {
        assert!(
            crate::support::eventually(Duration::from_secs(10), || arrived(id).is_some()).await,
            "{name}: a fresh span never arrived"
        );
        let took = arrived(id).unwrap().duration_since(*sent);
        println!("{name}: fresh request delivered {took:?} after it was sent");
        assert!(
            took < Duration::from_secs(2),
            "{name}: fresh spans took {took:?}"
        );
        last_fresh = last_fresh.max(arrived(id).unwrap());
    }
    // Still draining when the last fresh span arrived; then everything arrives.
    assert!(
        h.arrivals().iter().any(|a| a.at > last_fresh),
        "{name}: the backlog was through before the fresh spans"
    );
    assert!(
        crate::support::eventually(Duration::from_secs(60), || {
            h.arrivals().iter().map(|a| a.span_ids.len()).sum::<usize>() >= old + 32
        })
        .await,
        "{name}: the backlog never drained"
    );
    let took = returned.elapsed().as_secs_f64();
    let arrivals = h.arrivals();
    assert_eq!(
        arrivals.iter().map(|a| a.span_ids.len()).sum::<usize>(),
        old + 32,
        "{name}: every span once"
    );
    let rate = h.attempt_bytes() as f64 * 8.0 / took;
    println!("{name}: {:.2} Mbit/s over {took:.1} s", rate / 1e6);
    assert!(rate <= 2.0e6, "{name}: {rate} bit/s over a 2 Mbit/s link");
    edge.shutdown();
}
