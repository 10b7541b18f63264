//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same
//! checks the fuzz targets run, so every input the fuzzers kept stays a regression
//! test in `cargo test` (fuzzing itself needs nightly: see fuzz/README.md).

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let ok = std::panic::catch_unwind(|| check(&data));
        assert!(ok.is_ok(), "{target}: {} fails its check", path.display());
        n += 1;
    }
    n
}

#[test]
fn corpus_of_every_target_still_passes() {
    for (target, check) in [
        (
            "otlp_protobuf",
            tracespool::fuzzing::otlp_protobuf as fn(&[u8]),
        ),
        ("otlp_json", tracespool::fuzzing::otlp_json),
        ("gzip", tracespool::fuzzing::gzip),
        ("zstd", tracespool::fuzzing::zstd),
        ("wal_segment", tracespool::fuzzing::wal_segment),
    ] {
        let n = replay(target, check);
        assert!(n >= 2, "{target}: only {n} inputs in the corpus");
    }
}

#[test]
fn seeds_exercise_the_checks_past_the_first_gate() {
    // The seeds are real requests and segments, not noise: each passes the first
    // check of its target, so the fuzzers start from deep inside the code.
    let read = |p: &str| {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus")
                .join(p),
        )
        .unwrap()
    };
    let s = tracespool::otlp::wire::inspect_trace_request(&read("otlp_protobuf/pii")).unwrap();
    assert_eq!(s.spans, 4);
    let (_, s) =
        tracespool::otlp::json::json_to_protobuf(&read("otlp_json/shared-example.json")).unwrap();
    assert!(s.spans >= 1);
    let (pb, s) = tracespool::otlp::json::json_to_protobuf(&read("otlp_json/pii.json")).unwrap();
    assert_eq!(s.spans, 4);
    assert_eq!(
        pb,
        read("otlp_protobuf/pii"),
        "the SDK JSON converts to the SDK protobuf"
    );
    let out = tracespool::receiver::gunzip(&read("gzip/pii"), 1 << 20).unwrap();
    assert_eq!(out[..], read("otlp_protobuf/pii")[..]);
    for seed in ["zstd/pii", "zstd/streamed-no-size"] {
        let out = tracespool::receiver::unzstd(&read(seed), 1 << 20).unwrap();
        assert_eq!(out[..], read("otlp_protobuf/pii")[..], "{seed}");
    }
    let out = tracespool::payload::zstd_decompress(&read("zstd/two-frames"), 1 << 20).unwrap();
    assert_eq!(out.len(), 2 * read("otlp_protobuf/pii").len());
    let seg = tracespool_storage::offline::scan_segment(
        &read("wal_segment/forwarder-7-records"),
        1,
        None,
        false,
        None,
    );
    assert_eq!(
        seg.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert!(seg.damage.is_empty());
    let torn = tracespool_storage::offline::scan_segment(
        &read("wal_segment/torn-tail"),
        1,
        None,
        false,
        None,
    );
    assert!(torn.incomplete_tail.is_some() && torn.records.len() < 7);
    // A segment of sealed zstd records under the fuzz key: the target reaches the
    // decryption and the records open to the SDK's request.
    let sealed = read("wal_segment/sealed-zstd-5-records");
    let header = tracespool_storage::format::SegmentHeader::decode(&sealed).unwrap();
    assert_eq!(header.key_id, 1);
    let mut ring = tracespool_storage::KeyRing::default();
    ring.insert(1, tracespool::fuzzing::FUZZ_KEY).unwrap();
    let keys = tracespool_storage::offline::Keys {
        ring: &ring,
        wal_id: header.wal_id,
    };
    let seg = tracespool_storage::offline::scan_segment(&sealed, 1, None, true, Some(keys));
    assert_eq!(seg.records.len(), 5);
    assert!(seg.unopened.is_empty() && seg.damage.is_empty());
    for r in &seg.records {
        assert_eq!(r.codec, tracespool::payload::PROTOBUF_ZSTD);
        let pb = tracespool::payload::protobuf(r.codec, &r.payload).unwrap();
        assert_eq!(pb[..], read("otlp_protobuf/pii")[..]);
    }
    let locked = tracespool_storage::offline::scan_segment(&sealed, 1, None, true, None);
    assert_eq!((locked.records.len(), locked.unopened.len()), (0, 5));
}
