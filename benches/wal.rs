//! Write-ahead log benchmarks, each reported against a physical baseline measured in
//! the same run (these machines are shared and noisy; absolute numbers drift, ratios
//! much less).
//!
//! - `baseline/write_all+sync_data_1MiB`: one thread writes 1 MiB chunks to a plain
//!   file with `write_all` and calls `sync_data` after each chunk.
//! - `append_always/<record>/<appenders>`: appends with `fsync = always` from
//!   1, 8 and 64 concurrent tasks, records of 1 KiB, 16 KiB and 256 KiB.
//! - `read/sequential_16KiB`: a reader streaming a 256 MiB log from page cache.
//! - `open/2GiB`: opening a 2 GiB log (built once under `target/bench-data/`).
//!
//! At the end a summary table prints bytes/s, records/s and the ratio to the
//! baseline, plus resident memory after opening and reading the 2 GiB log.
//! `WAL_BENCH_QUICK=1` shortens every measurement (a smoke run, not a result).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use tracespool_storage::{Codec, FsyncPolicy, NewRecord, ReadItem, Wal, WalConfig, GIB, MIB};

/// (bytes, records, elapsed) accumulated per benchmark for the summary.
static RESULTS: Mutex<BTreeMap<String, (u64, u64, Duration)>> = Mutex::new(BTreeMap::new());

fn note(id: &str, bytes: u64, records: u64, elapsed: Duration) {
    let mut r = RESULTS.lock().unwrap();
    let e = r.entry(id.to_string()).or_default();
    e.0 += bytes;
    e.1 += records;
    e.2 += elapsed;
}

fn quick() -> bool {
    std::env::var_os("WAL_BENCH_QUICK").is_some()
}

fn bench_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    base.join("bench-data").join(name)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn record(payload: &Bytes) -> NewRecord {
    NewRecord {
        payload: payload.clone(),
        span_count: 1,
        codec: Codec(1),
        idempotency_key: Bytes::from_static(b"bench-key-0000000001"),
        received_at: SystemTime::now(),
    }
}

/// `appenders` tasks each append `per_task` records of `payload`; returns the last
/// seq appended.
async fn append_concurrently(wal: &Wal, payload: &Bytes, appenders: u64, per_task: u64) -> u64 {
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let wal = wal.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut last = 0;
                for _ in 0..per_task {
                    last = wal.append(record(&payload)).await.unwrap().seq;
                }
                last
            })
        })
        .collect();
    let mut last = 0;
    for t in tasks {
        last = last.max(t.await.unwrap());
    }
    last
}

fn baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("baseline");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(MIB));
    let dir = tempfile::tempdir_in(bench_dir("")).unwrap();
    let chunk = vec![0xA5u8; MIB as usize];
    g.bench_function("write_all+sync_data_1MiB", |b| {
        b.iter_custom(|iters| {
            let mut f = File::create(dir.path().join("baseline")).unwrap();
            let start = Instant::now();
            for _ in 0..iters {
                f.write_all(&chunk).unwrap();
                f.sync_data().unwrap();
            }
            let elapsed = start.elapsed();
            note("baseline", iters * MIB, iters, elapsed);
            elapsed
        })
    });
    g.finish();
}

fn append(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("append_always");
    g.sample_size(10);
    for &size in &[1024usize, 16 * 1024, 256 * 1024] {
        for &appenders in &[1u64, 8, 64] {
            let dir = tempfile::tempdir_in(bench_dir("")).unwrap();
            let mut cfg = WalConfig::new(dir.path());
            cfg.max_bytes = 64 * GIB;
            cfg.fsync = FsyncPolicy::Always;
            let (wal, _) = Wal::open(cfg).unwrap();
            // Deliver continuously so the log does not grow without bound.
            let cursor = wal
                .cursor("bench", tracespool_storage::CursorStart::Latest)
                .unwrap();
            let payload = Bytes::from(vec![0x5Au8; size]);
            let id = format!("{}KiB/{appenders}", size / 1024);
            // One iteration = one record from each appender.
            g.throughput(Throughput::Bytes(size as u64 * appenders));
            g.bench_with_input(
                BenchmarkId::from_parameter(&id),
                &appenders,
                |b, &appenders| {
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        rt.block_on(async {
                            let last = append_concurrently(&wal, &payload, appenders, iters).await;
                            let elapsed = start.elapsed();
                            note(
                                &format!("append {id}"),
                                iters * appenders * size as u64,
                                iters * appenders,
                                elapsed,
                            );
                            cursor.ack_range(1, last).unwrap();
                            wal.maintain().await;
                            elapsed
                        })
                    })
                },
            );
            rt.block_on(wal.close());
        }
    }
    g.finish();
}

fn read(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir_in(bench_dir("")).unwrap();
    let mut cfg = WalConfig::new(dir.path());
    cfg.fsync = FsyncPolicy::Never;
    let (wal, _) = Wal::open(cfg).unwrap();
    let size = 16 * 1024;
    let total = if quick() { 32 * MIB } else { 256 * MIB };
    let payload = Bytes::from(vec![0x33u8; size]);
    let n = total / size as u64;
    rt.block_on(async {
        let mut last = 0;
        for _ in 0..n {
            last = wal.append(record(&payload)).await.unwrap().seq;
        }
        wait_readable(&wal, last).await;
    });
    let mut g = c.benchmark_group("read");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(n * size as u64));
    g.bench_function("sequential_16KiB", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut reader = wal.reader(1);
                let mut bytes = 0u64;
                let mut records = 0u64;
                while let Some(item) = reader.try_next().unwrap() {
                    if let ReadItem::Record(r) = item {
                        bytes += r.payload.len() as u64;
                        records += 1;
                        std::hint::black_box(r.payload[r.payload.len() - 1]);
                    }
                }
                assert_eq!(records, n);
                note("read", bytes, records, Duration::ZERO);
            }
            let elapsed = start.elapsed();
            note("read", 0, 0, elapsed);
            elapsed
        })
    });
    g.finish();
    rt.block_on(wal.close());
}

/// Waits until readers see `seq`: under `fsync = never` records are read only
/// once synced (within about a second), as exporters read them.
async fn wait_readable(wal: &Wal, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while wal.stats().last_seq < seq {
        assert!(Instant::now() < deadline, "seq {seq} never became readable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Builds (once) a 2 GiB log of 64 MiB segments; the active segment is left nearly
/// full, the worst case for the tail scan.
fn two_gib_log() -> PathBuf {
    let dir = bench_dir("open-2GiB");
    let done = dir.join("COMPLETE");
    if done.exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let rt = runtime();
    let mut cfg = WalConfig::new(&dir);
    cfg.fsync = FsyncPolicy::Never;
    cfg.max_bytes = 4 * GIB;
    let (wal, _) = Wal::open(cfg).unwrap();
    let payload = Bytes::from(vec![0x77u8; 64 * 1024]);
    let target = 2 * GIB - 2 * MIB;
    rt.block_on(async {
        while wal.stats().bytes < target {
            wal.append(record(&payload)).await.unwrap();
        }
        wal.close().await;
    });
    File::create(&done).unwrap();
    dir
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn open(c: &mut Criterion) {
    let dir = two_gib_log();
    let mut cfg = WalConfig::new(&dir);
    cfg.max_bytes = 4 * GIB;
    let rt = runtime();
    let mut g = c.benchmark_group("open");
    g.sample_size(10);
    g.bench_function("2GiB", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let (wal, report) = Wal::open(cfg.clone()).unwrap();
                let elapsed = start.elapsed();
                total += elapsed;
                assert!(report.torn_tail.is_none());
                note("open 2GiB", report.scanned_bytes, 1, elapsed);
                rt.block_on(wal.close());
            }
            total
        })
    });
    g.finish();
    // Memory: after opening the 2 GiB log, and after reading all of it.
    let before = rss_kib();
    let (wal, _) = Wal::open(cfg.clone()).unwrap();
    let after_open = rss_kib();
    let mut reader = wal.reader(1);
    let mut bytes = 0u64;
    while let Some(item) = reader.try_next().unwrap() {
        if let ReadItem::Record(r) = item {
            bytes += r.payload.len() as u64;
        }
    }
    let after_read = rss_kib();
    drop(reader);
    rt.block_on(wal.close());
    println!(
        "memory: RSS {before} KiB before open, {after_open} KiB after opening the 2 GiB log, {after_read} KiB after reading all {} MiB of it",
        bytes / MIB
    );
}

/// The headline target, measured as interleaved pairs so both sides see the same
/// machine: 64 appenders of 16 KiB records vs. the baseline, same bytes each round.
fn paired_ratio() {
    let rounds = if quick() { 3 } else { 12 };
    let bytes = 64 * MIB;
    let rt = runtime();
    let dir = tempfile::tempdir_in(bench_dir("")).unwrap();
    let mut cfg = WalConfig::new(dir.path().join("wal"));
    cfg.max_bytes = 64 * GIB;
    let (wal, _) = Wal::open(cfg).unwrap();
    let cursor = wal
        .cursor("bench", tracespool_storage::CursorStart::Latest)
        .unwrap();
    let payload = Bytes::from(vec![0x5Au8; 16 * 1024]);
    let chunk = vec![0xA5u8; MIB as usize];
    let mut ratios = Vec::new();
    let stats0 = wal.stats();
    for _ in 0..rounds {
        let path = dir.path().join("baseline");
        let mut f = File::create(&path).unwrap();
        let start = Instant::now();
        for _ in 0..bytes / MIB {
            f.write_all(&chunk).unwrap();
            f.sync_data().unwrap();
        }
        let base = start.elapsed();
        drop(f);
        std::fs::remove_file(&path).unwrap();
        let per_task = bytes / (16 * 1024) / 64;
        let start = Instant::now();
        let last = rt.block_on(append_concurrently(&wal, &payload, 64, per_task));
        let ours = start.elapsed();
        cursor.ack_range(1, last).unwrap();
        rt.block_on(wal.maintain());
        ratios.push(base.as_secs_f64() / ours.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let stats = wal.stats();
    let per_sync = (stats.synced_records - stats0.synced_records) as f64
        / (stats.syncs - stats0.syncs).max(1) as f64;
    println!(
        "paired: 64 appenders x 16 KiB (fsync = always) vs write_all+sync_data 1 MiB chunks, {} MiB each, {rounds} rounds: median ratio {:.2} (min {:.2}, max {:.2}); {per_sync:.1} records per fdatasync",
        bytes / MIB,
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    rt.block_on(wal.close());
}

fn summary() {
    let results = RESULTS.lock().unwrap();
    let rate = |k: &str| {
        results.get(k).map(|(b, r, t)| {
            let s = t.as_secs_f64().max(1e-9);
            (*b as f64 / s, *r as f64 / s, *t)
        })
    };
    let Some((base, _, _)) = rate("baseline") else {
        return;
    };
    println!();
    println!(
        "{:<28} {:>12} {:>14} {:>10}",
        "benchmark", "MB/s", "records/s", "x baseline"
    );
    println!(
        "{:<28} {:>12.1} {:>14} {:>10.2}",
        "baseline write+fdatasync",
        base / 1e6,
        "-",
        1.0
    );
    for (k, _) in results
        .iter()
        .filter(|(k, _)| k.starts_with("append") || *k == "read")
    {
        let (bps, rps, _) = rate(k).unwrap();
        println!(
            "{:<28} {:>12.1} {:>14.0} {:>10.2}",
            k,
            bps / 1e6,
            rps,
            bps / base
        );
    }
    if let Some((b, r, t)) = results.get("open 2GiB") {
        println!(
            "open 2GiB: {:.1} ms mean over {r} opens, active segment scanned: {} MiB per open",
            t.as_secs_f64() * 1000.0 / *r as f64,
            b / r.max(&1) / MIB
        );
    }
}

fn main() {
    std::fs::create_dir_all(bench_dir("")).unwrap();
    let mut c = Criterion::default().configure_from_args();
    if quick() {
        c = c
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(1));
    } else {
        c = c
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4));
    }
    baseline(&mut c);
    append(&mut c);
    read(&mut c);
    open(&mut c);
    // The baseline again at the end: if the machine's speed drifted during the run,
    // the summary's ratios use the average of both.
    baseline(&mut c);
    c.final_summary();
    summary();
    paired_ratio();
}
