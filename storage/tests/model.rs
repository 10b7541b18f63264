//! Model check: random sequences of append / ack / rotate / maintain / reopen under
//! budget pressure, against a simple in-memory model that replicates the byte
//! accounting. After every step the log must agree with the model exactly: seqs,
//! refusals, evictions (ranges and span counts), bytes on disk, segment files,
//! cursor positions, and the records a reader returns.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use proptest::prelude::*;
use tracespool_storage::format::{frame_len, SEGMENT_HEADER_LEN};
use tracespool_storage::{
    AppendError, CursorStart, FullReason, GapCause, ReadItem, Wal, WalConfig, WhenFull,
};

const SEG: u64 = 8 * 1024;
const HDR: u64 = SEGMENT_HEADER_LEN as u64;

#[derive(Clone, Debug)]
enum Op {
    Append { len: usize, spans: u32 },
    Ack { cursor: usize, pick: u64 },
    Rotate,
    Maintain,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (8usize..3000, 0u32..20).prop_map(|(len, spans)| Op::Append { len, spans }),
        // Records far larger than usual: budget pressure.
        2 => (6000usize..24000).prop_map(|len| Op::Append { len, spans: 3 }),
        5 => (0usize..2, any::<u64>()).prop_map(|(cursor, pick)| Op::Ack { cursor, pick }),
        1 => Just(Op::Rotate),
        2 => Just(Op::Maintain),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Debug)]
struct Seg {
    first: u64,
    len: u64,
    sealed: bool,
}

/// (first seq, last seq, spans, undelivered records) of an evicted segment.
type Evicted = (u64, u64, u64, u64);

struct Model {
    max: u64,
    when_full: WhenFull,
    next_seq: u64,
    /// seq -> (id, len, spans) of records on disk.
    records: BTreeMap<u64, (u64, usize, u32)>,
    segs: Vec<Seg>,
    acked: [BTreeSet<u64>; 2],
    positions: [u64; 2],
}

impl Model {
    fn total(&self) -> u64 {
        self.segs.iter().map(|s| s.len).sum()
    }
    fn active(&mut self) -> &mut Seg {
        self.segs.last_mut().unwrap()
    }
    fn active_has_content(&self) -> bool {
        self.segs.last().unwrap().len > HDR
    }
    fn needs_rotation(&self, frame: u64) -> bool {
        self.active_has_content() && self.segs.last().unwrap().len + frame > SEG
    }
    fn last_of(&self, i: usize) -> u64 {
        if i + 1 < self.segs.len() {
            self.segs[i + 1].first - 1
        } else {
            self.next_seq - 1
        }
    }
    fn is_acked(&self, c: usize, seq: u64) -> bool {
        seq <= self.positions[c] || self.acked[c].contains(&seq)
    }
    /// Removes segment `i`.
    fn remove(&mut self, i: usize) -> Evicted {
        let (first, last) = (self.segs[i].first, self.last_of(i));
        self.segs.remove(i);
        let mut spans = 0;
        let mut undelivered = 0;
        for seq in first..=last {
            if let Some((_, _, s)) = self.records.remove(&seq) {
                spans += s as u64;
            }
            if !(self.is_acked(0, seq) && self.is_acked(1, seq)) {
                undelivered += 1;
            }
        }
        (first, last, spans, undelivered)
    }
    /// Expected outcome of an append of `frame` bytes.
    fn append(
        &mut self,
        id: u64,
        len: usize,
        spans: u32,
    ) -> Result<(u64, Vec<Evicted>), &'static str> {
        let frame = frame_len(format!("key-{id}").len(), len);
        if frame + HDR > self.max {
            return Err("too large");
        }
        let mut evicted = Vec::new();
        loop {
            let need = frame + if self.needs_rotation(frame) { HDR } else { 0 };
            if self.total() + need <= self.max {
                break;
            }
            if self.when_full == WhenFull::Backpressure {
                return Err("full");
            }
            if self.segs[0].sealed {
                evicted.push(self.remove(0));
            } else if self.active_has_content() {
                let e = self.remove(0);
                evicted.push(e);
                self.segs.push(Seg {
                    first: self.next_seq,
                    len: HDR,
                    sealed: false,
                });
            } else {
                return Err("full");
            }
        }
        if self.needs_rotation(frame) {
            self.rotate();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.active().len += frame;
        self.records.insert(seq, (id, len, spans));
        Ok((seq, evicted))
    }
    /// A rotation asked for from outside; refused when the header does not fit.
    fn rotate_request(&mut self) -> bool {
        if self.active_has_content() && self.total() + HDR > self.max {
            return false;
        }
        self.rotate();
        true
    }
    fn rotate(&mut self) {
        if self.active_has_content() {
            self.active().sealed = true;
            self.segs.push(Seg {
                first: self.next_seq,
                len: HDR,
                sealed: false,
            });
        }
    }
    fn maintain(&mut self) {
        while self.segs.len() > 1 && self.segs[0].sealed {
            let last = self.last_of(0);
            if self.positions.iter().all(|&p| p >= last) {
                self.remove(0);
            } else {
                break;
            }
        }
    }
    fn ack(&mut self, c: usize, seq: u64) {
        self.acked[c].insert(seq);
        while self.acked[c].remove(&(self.positions[c] + 1)) {
            self.positions[c] += 1;
        }
    }
}

fn run(ops: Vec<Op>, max: u64, when_full: WhenFull) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: WalConfig = small_config(dir.path());
    cfg.segment_bytes = SEG;
    cfg.max_bytes = max;
    cfg.when_full = when_full;
    let mut model = Model {
        max,
        when_full,
        next_seq: 1,
        records: BTreeMap::new(),
        segs: vec![Seg {
            first: 1,
            len: HDR,
            sealed: false,
        }],
        acked: [BTreeSet::new(), BTreeSet::new()],
        positions: [0, 0],
    };
    let mut wal = Some(Wal::open(cfg.clone()).unwrap().0);
    let names = ["a", "b"];
    for n in names {
        wal.as_ref()
            .unwrap()
            .cursor(n, CursorStart::Oldest)
            .unwrap();
    }
    let mut id = 0u64;
    for op in ops {
        let w = wal.as_ref().unwrap().clone();
        match op {
            Op::Append { len, spans } => {
                id += 1;
                let got = rt.block_on(w.append(record(id, len, spans)));
                let want = model.append(id, len, spans);
                match (&got, &want) {
                    (Ok(a), Ok((seq, evicted))) => {
                        prop_assert_eq!(a.seq, *seq);
                        let got_ev: Vec<_> = a
                            .evicted
                            .iter()
                            .map(|e| (e.first_seq, e.last_seq, e.spans, e.undelivered_records))
                            .collect();
                        prop_assert_eq!(&got_ev, evicted);
                    }
                    (Err(AppendError::Full(FullReason::Budget { .. })), Err("full")) => {}
                    (Err(AppendError::TooLarge { .. }), Err("too large")) => {}
                    _ => prop_assert!(
                        false,
                        "append of {} bytes: got {:?}, model {:?}",
                        len,
                        got,
                        want
                    ),
                }
            }
            Op::Ack { cursor, pick } => {
                let last = model.next_seq - 1;
                let lowest = model.positions[cursor] + 1;
                if lowest <= last {
                    // Mostly near the position, so positions move.
                    let seq = lowest + pick % (last - lowest + 1).min(8);
                    let c = w.cursor(names[cursor], CursorStart::Oldest).unwrap();
                    c.ack(seq).unwrap();
                    model.ack(cursor, seq);
                }
            }
            Op::Rotate => {
                let got = rt.block_on(w.rotate());
                let want = model.rotate_request();
                prop_assert_eq!(got.is_ok(), want, "rotate: {:?}", got);
            }
            Op::Maintain => {
                rt.block_on(w.maintain());
                model.maintain();
            }
            Op::Reopen => {
                drop(w);
                rt.block_on(wal.take().unwrap().close());
                let (reopened, report) = Wal::open(cfg.clone()).unwrap();
                prop_assert_eq!(report.next_seq, model.next_seq);
                prop_assert!(report.torn_tail.is_none() && report.lost.is_empty());
                // Acks above the position are durable too (close persists them).
                wal = Some(reopened);
                continue;
            }
        }
        check(wal.as_ref().unwrap(), &model, dir.path(), &names)?;
    }
    rt.block_on(wal.take().unwrap().close());
    Ok(())
}

fn check(
    wal: &Wal,
    model: &Model,
    dir: &std::path::Path,
    names: &[&str; 2],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(segment_bytes_on_disk(dir), model.total());
    prop_assert!(model.total() <= model.max);
    let files: Vec<String> = segment_files(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let want: Vec<String> = model
        .segs
        .iter()
        .map(|s| format!("{:020}.seg", s.first))
        .collect();
    prop_assert_eq!(files, want);
    for (i, n) in names.iter().enumerate() {
        let c = wal.cursor(n, CursorStart::Oldest).unwrap();
        prop_assert_eq!(c.position(), model.positions[i]);
    }
    let items = read_all(wal);
    let mut recs = items.iter();
    let first_present = model.segs[0].first;
    if first_present > 1 && model.next_seq > 1 {
        match recs.next() {
            Some(ReadItem::Gap(g)) => {
                prop_assert_eq!(
                    (g.first_seq, g.last_seq),
                    (1, (first_present - 1).min(model.next_seq - 1))
                );
                prop_assert_eq!(&g.cause, &GapCause::NotRetained);
            }
            other => prop_assert!(
                false,
                "expected a gap up to {}, got {:?}",
                first_present - 1,
                other
            ),
        }
    }
    let mut n = 0;
    for (item, (&seq, &(id, len, spans))) in recs.zip(model.records.iter()) {
        let ReadItem::Record(r) = item else {
            return Err(TestCaseError::fail(format!("unexpected {item:?}")));
        };
        prop_assert_eq!(r.seq, seq);
        prop_assert_eq!(&r.payload[..], &payload(id, len)[..]);
        prop_assert_eq!(r.span_count, spans);
        n += 1;
    }
    prop_assert_eq!(n, model.records.len());
    let stats = wal.stats();
    prop_assert_eq!(stats.bytes, model.total());
    prop_assert_eq!(stats.segments, model.segs.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_model_under_backpressure(ops in proptest::collection::vec(op(), 1..80), max in 20_000u64..70_000) {
        run(ops, max, WhenFull::Backpressure)?;
    }

    #[test]
    fn log_matches_model_under_drop_oldest(ops in proptest::collection::vec(op(), 1..80), max in 20_000u64..70_000) {
        run(ops, max, WhenFull::DropOldest)?;
    }
}
