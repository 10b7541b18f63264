//! The model's promises, checked on a real backing directory without FUSE.

use super::*;

fn disk(opts: Options) -> (tempfile::TempDir, Disk) {
    let dir = tempfile::tempdir().unwrap();
    let d = Disk::load(dir.path(), &opts).unwrap();
    (dir, d)
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn on_disk(dir: &tempfile::TempDir, rel: &str) -> Option<Vec<u8>> {
    fs::read(dir.path().join(rel)).ok()
}

/// Creates `rel` in the root with `bytes`, everything synced (file and directory).
fn durable_file(d: &mut Disk, rel: &str, bytes: &[u8]) -> Ino {
    let (a, fh) = d.create(ROOT, name(rel), 0o600, true).unwrap();
    d.write(a.ino, 0, bytes).unwrap();
    d.fsync(a.ino, None).unwrap();
    d.release(fh).unwrap();
    d.fsyncdir(ROOT).unwrap();
    a.ino
}

#[test]
fn unsynced_bytes_are_gone_after_a_cut_and_synced_bytes_stay() {
    let (dir, mut d) = disk(Options::default());
    let ino = durable_file(&mut d, "seg", b"synced");
    d.write(ino, 6, b" and not synced").unwrap();
    assert_eq!(d.read(ino, 0, 100).unwrap(), b"synced and not synced");
    let r = d.power_cut().unwrap();
    assert_eq!(on_disk(&dir, "seg").unwrap(), b"synced");
    assert_eq!(r.files.len(), 1);
    assert_eq!(r.files[0].size_before, 21);
    assert_eq!(r.files[0].size_after, 6);
}

#[test]
fn an_overwrite_goes_back_to_the_synced_bytes() {
    let (dir, mut d) = disk(Options::default());
    let ino = durable_file(&mut d, "f", &[7u8; 10_000]);
    d.write(ino, 5000, &[9u8; 100]).unwrap();
    d.power_cut().unwrap();
    assert_eq!(on_disk(&dir, "f").unwrap(), vec![7u8; 10_000]);
}

#[test]
fn a_new_file_needs_an_fsync_of_its_directory() {
    let (dir, mut d) = disk(Options::default());
    let (a, fh) = d.create(ROOT, name("new"), 0o600, true).unwrap();
    d.write(a.ino, 0, b"data").unwrap();
    d.fsync(a.ino, None).unwrap(); // the file's own fsync: data, not its name
    d.release(fh).unwrap();
    let r = d.power_cut().unwrap();
    assert_eq!(on_disk(&dir, "new"), None);
    assert_eq!(r.vanished, vec!["new".to_string()]);

    let (a, fh) = d.create(ROOT, name("new"), 0o600, true).unwrap();
    d.write(a.ino, 0, b"data").unwrap();
    d.fsyncdir(ROOT).unwrap(); // the name, not the data
    d.release(fh).unwrap();
    d.power_cut().unwrap();
    assert_eq!(on_disk(&dir, "new").unwrap(), b"");
}

#[test]
fn an_unsynced_rename_is_reverted_and_a_synced_one_kept() {
    let (dir, mut d) = disk(Options::default());
    durable_file(&mut d, "1.seg.tmp", b"header");
    d.rename(ROOT, name("1.seg.tmp"), ROOT, name("1.seg"), false)
        .unwrap();
    let r = d.power_cut().unwrap();
    assert_eq!(on_disk(&dir, "1.seg.tmp").unwrap(), b"header");
    assert_eq!(on_disk(&dir, "1.seg"), None);
    assert_eq!(r.vanished, vec!["1.seg".to_string()]);
    assert_eq!(r.restored, vec!["1.seg.tmp".to_string()]);

    d.rename(ROOT, name("1.seg.tmp"), ROOT, name("1.seg"), false)
        .unwrap();
    d.fsyncdir(ROOT).unwrap();
    d.power_cut().unwrap();
    assert_eq!(on_disk(&dir, "1.seg").unwrap(), b"header");
    assert_eq!(on_disk(&dir, "1.seg.tmp"), None);
}

#[test]
fn an_unsynced_unlink_comes_back_with_its_bytes() {
    let (dir, mut d) = disk(Options::default());
    durable_file(&mut d, "old.seg", b"records");
    d.unlink(ROOT, name("old.seg")).unwrap();
    assert!(d.lookup(ROOT, name("old.seg")).is_err());
    let r = d.power_cut().unwrap();
    assert_eq!(on_disk(&dir, "old.seg").unwrap(), b"records");
    assert_eq!(r.restored, vec!["old.seg".to_string()]);

    d.unlink(ROOT, name("old.seg")).unwrap();
    d.fsyncdir(ROOT).unwrap();
    d.power_cut().unwrap();
    assert_eq!(on_disk(&dir, "old.seg"), None);
    // The graveyard is empty again.
    assert_eq!(
        fs::read_dir(dir.path().join(".faultfs/grave"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_rename_over_a_file_that_is_not_synced_brings_the_old_file_back() {
    let (dir, mut d) = disk(Options::default());
    durable_file(&mut d, "state.json", b"old");
    let (a, fh) = d.create(ROOT, name("state.json.tmp"), 0o600, true).unwrap();
    d.write(a.ino, 0, b"new").unwrap();
    d.fsync(a.ino, None).unwrap();
    d.release(fh).unwrap();
    d.rename(
        ROOT,
        name("state.json.tmp"),
        ROOT,
        name("state.json"),
        false,
    )
    .unwrap();
    d.power_cut().unwrap();
    assert_eq!(on_disk(&dir, "state.json").unwrap(), b"old");
    assert_eq!(on_disk(&dir, "state.json.tmp"), None);
}

#[test]
fn a_rename_between_directories_commits_as_one_with_either_directory() {
    let (dir, mut d) = disk(Options::default());
    let wal = d.mkdir(ROOT, name("wal"), 0o700).unwrap().ino;
    let q = d.mkdir(ROOT, name("quarantine"), 0o700).unwrap().ino;
    d.fsyncdir(ROOT).unwrap();
    let (a, fh) = d.create(wal, name("9.seg"), 0o600, true).unwrap();
    d.write(a.ino, 0, b"foreign").unwrap();
    d.fsync(a.ino, None).unwrap();
    d.release(fh).unwrap();
    // The creation in wal/ is not synced; the move out of it is committed by an
    // fsync of quarantine/, and brings the creation with it.
    d.rename(wal, name("9.seg"), q, name("9.seg.foreign"), false)
        .unwrap();
    d.fsyncdir(q).unwrap();
    d.power_cut().unwrap();
    assert_eq!(
        on_disk(&dir, "quarantine/9.seg.foreign").unwrap(),
        b"foreign"
    );
    assert_eq!(on_disk(&dir, "wal/9.seg"), None);
}

#[test]
fn a_directory_that_was_never_synced_into_its_parent_vanishes_with_its_files() {
    let (dir, mut d) = disk(Options::default());
    let m = d.mkdir(ROOT, name("meta"), 0o700).unwrap().ino;
    let (a, fh) = d.create(m, name("db"), 0o600, true).unwrap();
    d.write(a.ino, 0, b"x").unwrap();
    d.fsync(a.ino, None).unwrap();
    d.fsyncdir(m).unwrap();
    d.release(fh).unwrap();
    let r = d.power_cut().unwrap();
    assert!(!dir.path().join("meta").exists());
    assert_eq!(r.vanished, vec!["meta/db".to_string()]);
}

#[test]
fn torn_mode_keeps_a_seeded_subset_of_pages_and_is_reproducible() {
    let run = |seed: u64| {
        let (dir, mut d) = disk(Options {
            seed,
            torn: Torn::Pages { keep_percent: 50 },
            limit: None,
        });
        let ino = durable_file(&mut d, "seg", &[1u8; 4096]);
        // Sixteen unsynced pages after the synced one, each with its own byte.
        for p in 1..=16u8 {
            d.write(ino, p as u64 * 4096, &[p + 1; 4096]).unwrap();
        }
        let r = d.power_cut().unwrap();
        (on_disk(&dir, "seg").unwrap(), r)
    };
    let (a, ra) = run(42);
    let (b, _) = run(42);
    assert_eq!(a, b, "same seed, same torn result");
    assert_eq!(&a[..4096], &[1u8; 4096][..], "synced page intact");
    let f = &ra.files[0];
    assert_eq!(f.pages_kept + f.pages_reverted, 16);
    assert!(f.pages_kept > 0 && f.pages_reverted > 0, "{f:?}");
    // Every page past the synced one is either its new content or zeros, and when
    // the size survived, a kept page can follow a lost one.
    for p in 1..(a.len() / 4096) {
        let page = &a[p * 4096..(p + 1) * 4096];
        assert!(
            page.iter().all(|&x| x == p as u8 + 1) || page.iter().all(|&x| x == 0),
            "page {p} is torn within itself"
        );
    }
    let mut seeds_with_gap = 0;
    for seed in 0..20 {
        let (bytes, _) = run(seed);
        let pages: Vec<bool> = (1..bytes.len() / 4096)
            .map(|p| bytes[p * 4096] != 0)
            .collect();
        if pages.windows(2).any(|w| !w[0] && w[1]) {
            seeds_with_gap += 1;
        }
    }
    assert!(
        seeds_with_gap > 0,
        "a later page never survived without an earlier one"
    );
}

#[test]
fn a_failed_fsync_drops_the_data_from_disk_but_reads_still_see_it() {
    let (dir, mut d) = disk(Options::default());
    let ino = durable_file(&mut d, "seg", b"synced.");
    d.write(ino, 7, b"lost on a failed fsync").unwrap();
    let e = d.fsync(ino, Some((libc::EIO, true))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    // The disk has the old bytes; reads (the page cache) still the new ones.
    assert_eq!(on_disk(&dir, "seg").unwrap(), b"synced.");
    assert_eq!(
        d.read(ino, 0, 100).unwrap(),
        b"synced.lost on a failed fsync"
    );
    assert_eq!(d.getattr(ino).unwrap().size, 29);
    // A later successful fsync does not write the pages back (they are clean)...
    d.fsync(ino, None).unwrap();
    d.power_cut().unwrap();
    assert_eq!(on_disk(&dir, "seg").unwrap(), b"synced.");
}

#[test]
fn a_truncate_after_a_failed_fsync_removes_the_ghost_bytes() {
    let (dir, mut d) = disk(Options::default());
    let ino = durable_file(&mut d, "seg", b"synced.");
    d.write(ino, 7, b"ghost").unwrap();
    let _ = d.fsync(ino, Some((libc::EIO, true)));
    d.truncate(ino, 7).unwrap();
    assert_eq!(d.read(ino, 0, 100).unwrap(), b"synced.");
    d.fsync(ino, None).unwrap();
    d.power_cut().unwrap();
    assert_eq!(on_disk(&dir, "seg").unwrap(), b"synced.");
}

#[test]
fn writing_into_a_ghost_page_dirties_the_whole_page() {
    let (dir, mut d) = disk(Options::default());
    let ino = durable_file(&mut d, "seg", b"");
    d.write(ino, 0, b"aaaa").unwrap();
    let _ = d.fsync(ino, Some((libc::EIO, true)));
    d.write(ino, 4, b"bbbb").unwrap();
    d.fsync(ino, None).unwrap();
    d.power_cut().unwrap();
    assert_eq!(on_disk(&dir, "seg").unwrap(), b"aaaabbbb");
}

#[test]
fn a_full_disk_gives_a_short_write_then_enospc_and_reserved_space_stays_usable() {
    let (_dir, mut d) = disk(Options {
        limit: Some(64 * 1024),
        ..Default::default()
    });
    let (a, _) = d.create(ROOT, name("ledger"), 0o600, true).unwrap();
    d.fallocate(a.ino, 0, 16 * 1024, libc::FALLOC_FL_KEEP_SIZE)
        .unwrap();
    let (b, seg_fh) = d.create(ROOT, name("seg"), 0o600, true).unwrap();
    let n = d.write(b.ino, 0, &vec![1u8; 100 * 1024]).unwrap();
    assert!(n > 0 && n < 100 * 1024, "short write: {n}");
    assert_eq!(n % 4096, 0);
    let e = d.write(b.ino, n as u64, b"more").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    let (_, free, _) = d.statfs().unwrap();
    assert_eq!(free, 0);
    // The preallocated ledger can still be written to.
    assert_eq!(d.write(a.ino, 0, &[2u8; 8192]).unwrap(), 8192);
    // Space comes back when a file goes (and nobody holds it open).
    d.unlink(ROOT, name("seg")).unwrap();
    assert!(d.write(a.ino, 16 * 1024, &[3u8; 4096]).is_err());
    d.release(seg_fh).unwrap();
    assert_eq!(d.write(a.ino, 16 * 1024, &[3u8; 4096]).unwrap(), 4096);
}

#[test]
fn reads_of_a_bad_range_fail_and_the_rest_of_the_file_reads() {
    let (_dir, mut d) = disk(Options::default());
    let ino = durable_file(&mut d, "seg", &[5u8; 3 * 4096]);
    d.add_bad(BadRange {
        path: "seg".into(),
        offset: 4096,
        len: 4096,
    });
    assert_eq!(
        d.read(ino, 4000, 200).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    assert_eq!(d.read(ino, 0, 4096).unwrap(), vec![5u8; 4096]);
    assert_eq!(d.read(ino, 8192, 4096).unwrap(), vec![5u8; 4096]);
    // Bad sectors are physical: they outlive a power cycle.
    d.power_cut().unwrap();
    let ino = d.lookup(ROOT, name("seg")).unwrap().ino;
    assert!(d.read(ino, 4096, 1).is_err());
}

#[test]
fn a_file_unlinked_while_open_keeps_its_bytes_until_released() {
    let (_dir, mut d) = disk(Options {
        limit: Some(1 << 20),
        ..Default::default()
    });
    let ino = durable_file(&mut d, "seg", &[1u8; 8192]);
    let fh = d.open(ino).unwrap();
    let used = d.stats().used_bytes;
    d.unlink(ROOT, name("seg")).unwrap();
    d.fsyncdir(ROOT).unwrap();
    assert_eq!(d.read(ino, 0, 8192).unwrap(), vec![1u8; 8192]);
    assert_eq!(d.stats().used_bytes, used, "still held open");
    d.release(fh).unwrap();
    assert_eq!(d.stats().used_bytes, used - 8192);
}
