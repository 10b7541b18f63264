//! Kill -9 at random moments: a child process appends with `fsync = always` from
//! several tasks and prints every seq whose append returned; the parent SIGKILLs it,
//! reopens the log, and checks that every acknowledged record is present byte for
//! byte and that no partial record is ever returned.
//!
//! The child is this test binary itself, re-run with an environment variable set.
//! Cycles: 60 by default, `TRACESPOOL_CRASH_CYCLES` for longer soaks.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tracespool_storage::{Codec, NewRecord, ReadItem, Wal, WalConfig};

const CHILD_DIR: &str = "TRACESPOOL_CRASH_CHILD_DIR";
const CHILD_RUN: &str = "TRACESPOOL_CRASH_CHILD_RUN";
const TEST_NAME: &str = "acknowledged_appends_survive_sigkill_at_random_moments";

fn config(dir: &Path) -> WalConfig {
    let mut cfg = WalConfig::new(dir);
    cfg.segment_bytes = 256 * 1024;
    cfg
}

/// `[id: u64][len: u64][bytes derived from id]`: a record is intact only if its
/// length and every byte agree with its own header.
fn payload(id: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&(len as u64).to_le_bytes());
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

fn self_consistent(p: &[u8]) -> Option<u64> {
    if p.len() < 16 {
        return None;
    }
    let id = u64::from_le_bytes(p[..8].try_into().unwrap());
    let len = u64::from_le_bytes(p[8..16].try_into().unwrap()) as usize;
    (len == p.len() && p == &payload(id, len)[..]).then_some(id)
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn size_for(r: u64) -> usize {
    match r % 100 {
        0 => 40_000 + (r >> 8) as usize % 30_000,
        1..=10 => 4_000 + (r >> 8) as usize % 12_000,
        _ => 16 + (r >> 8) as usize % 2_000,
    }
}

#[test]
fn acknowledged_appends_survive_sigkill_at_random_moments() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let run: u64 = std::env::var(CHILD_RUN).unwrap().parse().unwrap();
        child(Path::new(&dir), run);
        return;
    }
    let cycles: u64 = std::env::var("TRACESPOOL_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // seq -> (id, len, spans) of every acknowledged append.
    let mut acked: BTreeMap<u64, (u64, usize, u32)> = BTreeMap::new();
    let mut rng = 0x5EED_u64 ^ std::process::id() as u64;
    let mut kills_before_first_ack = 0;
    let (mut check_from, mut next_check_from) = (1, 1);
    for run in 1..=cycles {
        rng = xorshift(rng);
        let mut child = Command::new(&exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_RUN, run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let lines = std::thread::spawn(move || {
            let mut out = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if out.is_empty() {
                    let _ = first_tx.send(());
                }
                out.push(line);
            }
            out
        });
        if rng.is_multiple_of(5) {
            // Early kill: during open and recovery, or the first appends.
            std::thread::sleep(Duration::from_millis(rng % 40));
        } else {
            let _ = first_rx.recv_timeout(Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(rng % 250));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = lines.join().unwrap();
        let mut new = 0;
        for line in &lines {
            // Only complete lines count: a kill can cut the last one short.
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() != 6 || f[0] != "ACK" || f[5] != "END" {
                continue;
            }
            let seq: u64 = f[1].parse().unwrap();
            let rec = (
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            );
            if let Some(prev) = acked.insert(seq, rec) {
                panic!("run {run}: seq {seq} acknowledged twice: {prev:?} and {rec:?}");
            }
            new += 1;
        }
        if new == 0 {
            kills_before_first_ack += 1;
        }
        // Each cycle checks the region a kill can reach (everything since the
        // previous cycle began); the end checks the whole log.
        verify(dir.path(), &acked, run, check_from);
        check_from = acked
            .keys()
            .next_back()
            .map(|s| s + 1)
            .unwrap_or(1)
            .min(next_check_from);
        next_check_from = acked.keys().next_back().map(|s| s + 1).unwrap_or(1);
    }
    verify(dir.path(), &acked, cycles + 1, 1);
    assert!(
        acked.len() > 1000,
        "too few appends to mean anything: {}",
        acked.len()
    );
    assert!(
        kills_before_first_ack < cycles / 2,
        "most children died before appending"
    );
    println!(
        "{cycles} kill cycles, {} acknowledged records, all present",
        acked.len()
    );
}

/// Opens the log after a kill; every acknowledged record must be there intact, and
/// every record returned must be whole.
fn verify(dir: &Path, acked: &BTreeMap<u64, (u64, usize, u32)>, run: u64, from: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (wal, report) = Wal::open(config(dir))
            .unwrap_or_else(|e| panic!("run {run}: open after kill failed: {e}"));
        assert!(
            report.lost.is_empty(),
            "run {run}: damage after a plain kill: {:?}",
            report.lost
        );
        let mut reader = wal.reader(from);
        let mut expect = from;
        let mut seen = 0;
        while let Some(item) = reader.try_next().unwrap() {
            let r = match item {
                ReadItem::Record(r) => r,
                // A kill mid-write leaves a torn tail, cut at open; the seqs its
                // bytes could have held are skipped, never reused. None of them
                // may have been acknowledged.
                ReadItem::Gap(g) if g.cause == tracespool_storage::GapCause::Skipped => {
                    assert_eq!(g.first_seq, expect, "run {run}: {g:?}");
                    if let Some((seq, _)) = acked.range(g.first_seq..=g.last_seq).next() {
                        panic!("run {run}: acknowledged seq {seq} inside skipped seqs {g:?}");
                    }
                    expect = g.last_seq + 1;
                    continue;
                }
                other => panic!("run {run}: damage after a plain kill: {other:?}"),
            };
            assert_eq!(r.seq, expect, "run {run}: seqs not contiguous");
            expect += 1;
            let id = self_consistent(&r.payload)
                .unwrap_or_else(|| panic!("run {run}: seq {} is not a whole record", r.seq));
            if let Some(&(aid, len, spans)) = acked.get(&r.seq) {
                assert_eq!(
                    (id, r.payload.len(), r.span_count),
                    (aid, len, spans),
                    "run {run}: seq {}",
                    r.seq
                );
                assert_eq!(&r.idempotency_key[..], format!("k{id}").as_bytes());
                seen += 1;
            }
        }
        assert_eq!(
            seen,
            acked.range(from..).count(),
            "run {run}: acknowledged records missing"
        );
        drop(reader);
        wal.close().await;
    });
}

fn child(dir: &Path, run: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let (wal, _) = Wal::open(config(dir)).expect("child open");
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let wal = wal.clone();
            tasks.push(tokio::spawn(async move {
                let mut r = xorshift((run << 20) ^ ((t + 1) * 0x1234_5678_9ABC));
                for i in 0u64.. {
                    r = xorshift(r);
                    let id = (run << 32) | (t << 24) | i;
                    let len = size_for(r);
                    let spans = (r % 64) as u32;
                    let a = wal
                        .append(NewRecord {
                            payload: Bytes::from(payload(id, len)),
                            span_count: spans,
                            codec: Codec(1),
                            idempotency_key: Bytes::from(format!("k{id}")),
                            received_at: SystemTime::now(),
                        })
                        .await
                        .expect("append");
                    println!("ACK {} {id} {len} {spans} END", a.seq);
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("child was not killed");
    });
}
