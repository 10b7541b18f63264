//! Reconciliation from the ledger: for a window of acceptance times and each
//! destination, every accepted batch is in exactly one of delivered, dropped (by
//! reason), dead-lettered or pending. The table balances by construction; what
//! `audit summary` checks is that nothing pending is unaccounted for — gone from the
//! log, or behind the destination's cursor, without an entry saying why.
//!
//! Drop reasons besides a destination's own: `drop_oldest` (budget), `corruption`
//! (damaged records), `torn_tail` (cut at start), `unclean_stop` (seqs skipped at
//! start, not in the log), `not_durable` (a failed fdatasync under `never`/
//! `interval`), `destination_removed`. What the ledger itself cannot show — batches
//! acknowledged just before an unclean stop under `never`/`interval`, whose entries
//! were lost with them — is listed as [`Summary::unverifiable`], with the window.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::Entry;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub records: u64,
    pub spans: u64,
}

impl Count {
    fn add(&mut self, spans: u64) {
        self.records += 1;
        self.spans += spans;
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DestinationSummary {
    pub destination: String,
    pub accepted: Count,
    pub delivered: Count,
    /// By reason: drop_oldest, corruption, ...
    pub dropped: BTreeMap<String, Count>,
    pub dead_lettered: Count,
    pub pending: Count,
    /// Pending records no longer in the log, with no entry saying why.
    pub pending_not_in_log: u64,
    /// Pending records the destination's cursor has passed, with no entry saying why.
    pub pending_behind_cursor: u64,
}

impl DestinationSummary {
    pub fn dropped_total(&self) -> Count {
        self.dropped.values().fold(Count::default(), |a, c| Count {
            records: a.records + c.records,
            spans: a.spans + c.spans,
        })
    }

    /// accepted = delivered + dropped + dead-lettered + pending, and nothing pending
    /// is unaccounted for.
    pub fn balances(&self) -> bool {
        let d = self.dropped_total();
        self.accepted.records
            == self.delivered.records
                + d.records
                + self.dead_lettered.records
                + self.pending.records
            && self.accepted.spans
                == self.delivered.spans + d.spans + self.dead_lettered.spans + self.pending.spans
            && self.pending_not_in_log == 0
            && self.pending_behind_cursor == 0
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Time of the oldest ledger entry (ms since the epoch): history starts there.
    pub ledger_since_ms: Option<u64>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub accepted: Count,
    pub deduplicated: Count,
    /// Refused requests, by reason.
    pub rejected: BTreeMap<String, Count>,
    /// Spans the processors took out before storing, by why (sampled, filtered):
    /// answered with success, never stored, so outside the per-destination balance.
    pub removed_by_processors: BTreeMap<String, u64>,
    /// Requests the processors emptied entirely (records: requests; spans: received).
    pub discarded: Count,
    pub destinations: Vec<DestinationSummary>,
    pub balanced: bool,
    /// Windows the audit cannot vouch for: before an unclean stop under `fsync =
    /// never`/`interval`, acknowledged batches (and their ledger entries) may be
    /// gone without a trace. Empty under `always`.
    pub unverifiable: Vec<Unverifiable>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Unverifiable {
    pub since_ms: u64,
    pub until_ms: u64,
    pub reason: String,
}

/// What the log itself says, to check pending records against.
#[derive(Clone, Debug, Default)]
pub struct LogView {
    /// The oldest seq still on disk (records below are gone).
    pub first_retained_seq: u64,
    /// Cursor positions by destination, if known.
    pub cursors: HashMap<String, u64>,
}

/// Ranges with a payload, made disjoint by [`Ranges::finish`] (where ranges
/// overlap, the earlier-starting one's payload covers the overlap); point queries
/// by binary search.
#[derive(Default)]
struct Ranges<T: Clone>(Vec<(u64, u64, T)>);

impl<T: Clone> Ranges<T> {
    fn push(&mut self, a: u64, b: u64, v: T) {
        self.0.push((a, b, v));
    }
    fn finish(&mut self) {
        self.0.sort_by_key(|r| r.0);
        let mut out: Vec<(u64, u64, T)> = Vec::with_capacity(self.0.len());
        for (a, b, v) in self.0.drain(..) {
            match out.last().map(|l| l.1) {
                Some(end) if a <= end => {
                    if b > end {
                        out.push((end + 1, b, v));
                    }
                }
                _ => out.push((a, b, v)),
            }
        }
        self.0 = out;
    }
    fn find(&self, seq: u64) -> Option<&T> {
        let i = self.0.partition_point(|r| r.0 <= seq);
        self.0[..i].last().filter(|r| r.1 >= seq).map(|r| &r.2)
    }
}

pub fn summarize(
    entries: &[Entry],
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    only: Option<&str>,
    log: Option<&LogView>,
) -> Summary {
    let in_window = |t: u64| since_ms.is_none_or(|s| t >= s) && until_ms.is_none_or(|u| t < u);
    let mut s = Summary {
        since_ms,
        until_ms,
        ledger_since_ms: entries.iter().map(entry_time).min(),
        ..Default::default()
    };
    let mut accepted: BTreeMap<u64, u64> = BTreeMap::new();
    let mut delivered: HashMap<String, Ranges<()>> = HashMap::new();
    let mut dead: HashMap<String, BTreeSet<u64>> = HashMap::new();
    let mut dropped: HashMap<String, Ranges<String>> = HashMap::new();
    let mut dropped_all: Ranges<String> = Ranges::default();
    let mut from_seq: HashMap<String, u64> = HashMap::new();
    let mut removed_at: HashMap<String, u64> = HashMap::new();
    let mut destinations: BTreeSet<String> = BTreeSet::new();
    for e in entries {
        match e {
            Entry::DestinationRemoved {
                destination,
                at_seq,
                ..
            } => {
                destinations.insert(destination.clone());
                removed_at.insert(destination.clone(), at_seq.unwrap_or(u64::MAX));
            }
            Entry::SeqsSkipped {
                first_seq,
                last_seq,
                ..
            } => dropped_all.push(*first_seq, *last_seq, "unclean_stop".into()),
            Entry::Quarantined {
                first_seq: Some(a),
                last_seq: Some(b),
                ..
            } => dropped_all.push(*a, *b, "torn_tail".into()),
            Entry::UncleanStop {
                t,
                fsync,
                last_entry_ms,
                window_ms: Some(w),
            } if in_window(*t) || last_entry_ms.is_some_and(&in_window) => {
                // From `w` before the last entry that survived (the ledger's own
                // last second may be gone too) until the restart.
                s.unverifiable.push(Unverifiable {
                    since_ms: last_entry_ms.unwrap_or(*t).saturating_sub(*w),
                    until_ms: *t,
                    reason: format!(
                        "unclean stop under fsync = {fsync}: batches acknowledged in the last {w} ms before it may be lost, together with their ledger entries"
                    ),
                });
            }
            Entry::Accepted {
                t,
                seq,
                spans,
                removed,
                ..
            } if in_window(*t) => {
                accepted.entry(*seq).or_insert(*spans as u64);
                if let Some(r) = removed {
                    add_removed(&mut s.removed_by_processors, r);
                }
            }
            Entry::Discarded {
                t, spans, removed, ..
            } if in_window(*t) => {
                s.discarded.add(*spans as u64);
                add_removed(&mut s.removed_by_processors, removed);
            }
            Entry::Deduplicated { t, spans, .. } if in_window(*t) => {
                s.deduplicated.add(*spans as u64)
            }
            Entry::Rejected {
                t, reason, spans, ..
            } if in_window(*t) => s
                .rejected
                .entry(reason.clone())
                .or_default()
                .add(*spans as u64),
            Entry::Tallied {
                t,
                rejected,
                deduplicated,
                ..
            } if in_window(*t) => {
                for (reason, n) in rejected {
                    let c = s.rejected.entry(reason.clone()).or_default();
                    c.records += n.requests;
                    c.spans += n.spans;
                }
                s.deduplicated.records += deduplicated.requests;
                s.deduplicated.spans += deduplicated.spans;
            }
            Entry::Delivered {
                destination,
                first_seq,
                last_seq,
                ..
            } => {
                destinations.insert(destination.clone());
                delivered
                    .entry(destination.clone())
                    .or_default()
                    .push(*first_seq, *last_seq, ());
            }
            Entry::DeadLettered {
                destination, seq, ..
            } => {
                destinations.insert(destination.clone());
                dead.entry(destination.clone()).or_default().insert(*seq);
            }
            Entry::Dropped {
                reason,
                destination,
                first_seq,
                last_seq,
                ..
            } => match destination {
                Some(d) => {
                    destinations.insert(d.clone());
                    dropped.entry(d.clone()).or_default().push(
                        *first_seq,
                        *last_seq,
                        reason.clone(),
                    );
                }
                None => dropped_all.push(*first_seq, *last_seq, reason.clone()),
            },
            Entry::Damaged {
                first_seq,
                last_seq,
                ..
            } => dropped_all.push(*first_seq, *last_seq, "corruption".into()),
            Entry::DestinationAdded {
                destination,
                from_seq: f,
                ..
            } => {
                destinations.insert(destination.clone());
                if removed_at.remove(destination).is_some() {
                    // Added again after a removal: only what came after counts.
                    from_seq.insert(destination.clone(), *f);
                } else {
                    from_seq.entry(destination.clone()).or_insert(*f);
                }
            }
            _ => {}
        }
    }
    if let Some(log) = log {
        destinations.extend(log.cursors.keys().cloned());
    }
    for r in delivered.values_mut() {
        r.finish();
    }
    for r in dropped.values_mut() {
        r.finish();
    }
    dropped_all.finish();
    for spans in accepted.values() {
        s.accepted.add(*spans);
    }
    for name in destinations {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let mut d = DestinationSummary {
            destination: name.clone(),
            ..Default::default()
        };
        let start = from_seq.get(&name).copied().unwrap_or(0);
        let empty = Ranges::default();
        let del = delivered.get(&name).unwrap_or(&empty);
        let dead_set = dead.get(&name);
        let emptys = Ranges::default();
        let drop = dropped.get(&name).unwrap_or(&emptys);
        let cursor = log.and_then(|l| l.cursors.get(&name).copied());
        let removed = removed_at.get(&name).copied();
        for (&seq, &spans) in accepted.range(start..) {
            if removed.is_some_and(|r| seq > r) {
                // Accepted after the destination was removed: never meant for it.
                continue;
            }
            d.accepted.add(spans);
            if del.find(seq).is_some() {
                d.delivered.add(spans);
            } else if dead_set.is_some_and(|x| x.contains(&seq)) {
                d.dead_lettered.add(spans);
            } else if let Some(reason) = drop.find(seq).or_else(|| dropped_all.find(seq)) {
                d.dropped.entry(reason.clone()).or_default().add(spans);
            } else if removed.is_some() {
                d.dropped
                    .entry("destination_removed".into())
                    .or_default()
                    .add(spans);
            } else {
                d.pending.add(spans);
                if let Some(l) = log {
                    if seq < l.first_retained_seq {
                        d.pending_not_in_log += 1;
                    } else if cursor.is_some_and(|c| seq <= c) {
                        d.pending_behind_cursor += 1;
                    }
                }
            }
        }
        s.destinations.push(d);
    }
    s.balanced = s.destinations.iter().all(|d| d.balances());
    s
}

/// The seq ranges the ledger says `destination` is done with — delivered,
/// dead-lettered, dropped, damaged, skipped — merged. Used to rebuild a cursor whose
/// own file was lost.
pub fn settled_ranges(entries: &[Entry], destination: &str) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = Vec::new();
    for e in entries {
        match e {
            Entry::Delivered {
                destination: d,
                first_seq,
                last_seq,
                ..
            } if d == destination => v.push((*first_seq, *last_seq)),
            Entry::DeadLettered {
                destination: d,
                seq,
                ..
            } if d == destination => v.push((*seq, *seq)),
            Entry::Dropped {
                destination: d,
                first_seq,
                last_seq,
                ..
            } if d.as_deref().is_none_or(|d| d == destination) => v.push((*first_seq, *last_seq)),
            Entry::Damaged {
                first_seq,
                last_seq,
                ..
            }
            | Entry::SeqsSkipped {
                first_seq,
                last_seq,
                ..
            } => v.push((*first_seq, *last_seq)),
            _ => {}
        }
    }
    v.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (a, b) in v {
        match merged.last_mut() {
            Some(m) if a <= m.1.saturating_add(1) => m.1 = m.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

fn add_removed(to: &mut BTreeMap<String, u64>, r: &super::Removed) {
    for (why, n) in [("sampled", r.sampled), ("filtered", r.filtered)] {
        if n > 0 {
            *to.entry(why.to_string()).or_default() += n;
        }
    }
}

pub fn entry_time(e: &Entry) -> u64 {
    match e {
        Entry::Accepted { t, .. }
        | Entry::Discarded { t, .. }
        | Entry::Deduplicated { t, .. }
        | Entry::Rejected { t, .. }
        | Entry::Delivered { t, .. }
        | Entry::DeadLettered { t, .. }
        | Entry::Dropped { t, .. }
        | Entry::Damaged { t, .. }
        | Entry::Quarantined { t, .. }
        | Entry::DestinationAdded { t, .. }
        | Entry::DestinationRemoved { t, .. }
        | Entry::SeqsSkipped { t, .. }
        | Entry::UncleanStop { t, .. }
        | Entry::LedgerRepaired { t, .. }
        | Entry::Checkpoint { t, .. }
        | Entry::Replayed { t, .. }
        | Entry::Tallied { t, .. }
        | Entry::Started { t, .. }
        | Entry::Stopped { t } => *t,
    }
}

/// Every entry that concerns `seq`, in ledger order.
pub fn history(entries: &[Entry], seq: u64) -> Vec<Entry> {
    entries
        .iter()
        .filter(|e| match e {
            Entry::Accepted { seq: s, .. }
            | Entry::Deduplicated { seq: s, .. }
            | Entry::DeadLettered { seq: s, .. } => *s == seq,
            Entry::Delivered {
                first_seq,
                last_seq,
                ..
            }
            | Entry::Dropped {
                first_seq,
                last_seq,
                ..
            }
            | Entry::Damaged {
                first_seq,
                last_seq,
                ..
            }
            | Entry::Replayed {
                first_seq,
                last_seq,
                ..
            } => (*first_seq..=*last_seq).contains(&seq),
            _ => false,
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(seq: u64, t: u64, spans: u32) -> Entry {
        Entry::Accepted {
            t,
            seq,
            key: None,
            spans,
            bytes: 10,
            client: None,
            protocol: "grpc".into(),
            recovered: false,
            tenant: None,
            removed: None,
        }
    }

    #[test]
    fn every_accepted_batch_lands_in_exactly_one_bucket() {
        let mut e: Vec<Entry> = (1..=10).map(|s| acc(s, 100 + s, 2)).collect();
        e.push(Entry::DestinationAdded {
            t: 0,
            destination: "a".into(),
            from_seq: 1,
        });
        e.push(Entry::Delivered {
            t: 1,
            destination: "a".into(),
            first_seq: 1,
            last_seq: 4,
            spans: 8,
            attempts: 1,
            by: None,
            receipt: None,
        });
        e.push(Entry::DeadLettered {
            t: 1,
            destination: "a".into(),
            seq: 5,
            spans: 2,
            attempts: 1,
            status: "x".into(),
        });
        e.push(Entry::Dropped {
            t: 1,
            reason: "drop_oldest".into(),
            destination: Some("a".into()),
            first_seq: 6,
            last_seq: 7,
            spans: Some(4),
        });
        e.push(Entry::Damaged {
            t: 1,
            first_seq: 8,
            last_seq: 8,
            segment: 1,
            offset: 0,
            spans: None,
            detail: "x".into(),
        });
        // Delivered after being counted as dropped: delivered wins.
        e.push(Entry::Delivered {
            t: 2,
            destination: "a".into(),
            first_seq: 7,
            last_seq: 7,
            spans: 2,
            attempts: 3,
            by: None,
            receipt: None,
        });
        let log = LogView {
            first_retained_seq: 9,
            cursors: HashMap::from([("a".into(), 8)]),
        };
        let s = summarize(&e, None, None, None, Some(&log));
        let a = &s.destinations[0];
        assert_eq!(
            a.accepted,
            Count {
                records: 10,
                spans: 20
            }
        );
        assert_eq!(
            a.delivered,
            Count {
                records: 5,
                spans: 10
            }
        );
        assert_eq!(
            a.dead_lettered,
            Count {
                records: 1,
                spans: 2
            }
        );
        assert_eq!(
            a.dropped["drop_oldest"],
            Count {
                records: 1,
                spans: 2
            }
        );
        assert_eq!(
            a.dropped["corruption"],
            Count {
                records: 1,
                spans: 2
            }
        );
        assert_eq!(
            a.pending,
            Count {
                records: 2,
                spans: 4
            }
        );
        assert!(a.balances() && s.balanced);
        // A window: only batches accepted in it.
        let w = summarize(&e, Some(104), Some(107), None, Some(&log));
        assert_eq!(w.destinations[0].accepted.records, 3);
        assert_eq!(w.destinations[0].delivered.records, 1);
    }

    #[test]
    fn pending_batches_gone_from_the_log_or_behind_the_cursor_do_not_balance() {
        let e: Vec<Entry> = (1..=4)
            .map(|s| acc(s, 1, 1))
            .chain([Entry::DestinationAdded {
                t: 0,
                destination: "a".into(),
                from_seq: 1,
            }])
            .collect();
        let gone = LogView {
            first_retained_seq: 3,
            cursors: HashMap::new(),
        };
        let s = summarize(&e, None, None, None, Some(&gone));
        assert_eq!(s.destinations[0].pending_not_in_log, 2);
        assert!(!s.balanced);
        let behind = LogView {
            first_retained_seq: 1,
            cursors: HashMap::from([("a".into(), 3)]),
        };
        let s = summarize(&e, None, None, None, Some(&behind));
        assert_eq!(s.destinations[0].pending_behind_cursor, 3);
        assert!(!s.balanced);
    }

    #[test]
    fn a_removed_destination_balances_with_its_pending_batches_dropped() {
        let mut e: Vec<Entry> = ["a", "b"]
            .iter()
            .map(|d| Entry::DestinationAdded {
                t: 0,
                destination: d.to_string(),
                from_seq: 1,
            })
            .collect();
        e.extend((1..=6).map(|s| acc(s, 100 + s, 3)));
        e.push(Entry::Delivered {
            t: 1,
            destination: "b".into(),
            first_seq: 1,
            last_seq: 2,
            spans: 6,
            attempts: 1,
            by: None,
            receipt: None,
        });
        // b is removed from the config with 3..=4 still pending; 5 and 6 arrive
        // afterwards and were never meant for it.
        e.insert(
            6,
            Entry::DestinationRemoved {
                t: 104,
                destination: "b".into(),
                at_seq: Some(4),
            },
        );
        let view = LogView {
            first_retained_seq: 1,
            cursors: [("a".to_string(), 0)].into(),
        };
        let s = summarize(&e, None, None, None, Some(&view));
        let b = s
            .destinations
            .iter()
            .find(|d| d.destination == "b")
            .unwrap();
        assert_eq!(b.accepted.records, 4);
        assert_eq!(b.delivered.records, 2);
        assert_eq!(
            b.dropped.get("destination_removed"),
            Some(&Count {
                records: 2,
                spans: 6
            })
        );
        assert!(s.balanced, "{s:#?}");
    }

    #[test]
    fn skipped_seqs_and_torn_tails_explain_missing_batches_and_unclean_stops_are_windows() {
        let mut e: Vec<Entry> = (1..=5).map(|s| acc(s, 1000 + s, 1)).collect();
        e.push(Entry::DestinationAdded {
            t: 0,
            destination: "a".into(),
            from_seq: 1,
        });
        e.push(Entry::Delivered {
            t: 1,
            destination: "a".into(),
            first_seq: 1,
            last_seq: 2,
            spans: 2,
            attempts: 1,
            by: None,
            receipt: None,
        });
        e.push(Entry::Quarantined {
            t: 2000,
            segment: 1,
            first_seq: Some(3),
            last_seq: Some(3),
            bytes: 10,
            file: "q".into(),
            reason: "torn".into(),
        });
        e.push(Entry::SeqsSkipped {
            t: 2000,
            first_seq: 3,
            last_seq: 5000,
            may_hold_acknowledged: true,
            reason: "unclean stop".into(),
        });
        e.push(Entry::UncleanStop {
            t: 2000,
            fsync: "never".into(),
            last_entry_ms: Some(1500),
            window_ms: Some(1000),
        });
        let view = LogView {
            first_retained_seq: 5001,
            cursors: [("a".to_string(), 5000)].into(),
        };
        let s = summarize(&e, None, None, None, Some(&view));
        let a = &s.destinations[0];
        assert_eq!(a.dropped.get("torn_tail").map(|c| c.records), Some(1));
        assert_eq!(a.dropped.get("unclean_stop").map(|c| c.records), Some(2));
        assert!(s.balanced, "{s:#?}");
        assert_eq!(
            s.unverifiable,
            vec![Unverifiable {
                since_ms: 500,
                until_ms: 2000,
                reason: s.unverifiable[0].reason.clone(),
            }]
        );
        assert!(s.unverifiable[0].reason.contains("never"));
    }
}
