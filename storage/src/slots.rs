//! A small record kept durably in a file of two fixed-size slots, written in turn.
//!
//! A write goes to the slot the last write did not use and is `fdatasync`ed; a torn
//! write can only damage that slot, so the other still holds the previous record.
//! Reading takes the valid slot with the higher generation. Both slots are written
//! in full when the file is created, so later writes overwrite blocks the file
//! already owns and do not need free space: a full disk cannot stop them.
//!
//! Slot layout (little-endian; changing this changes the format, see FORMAT.md):
//!
//! | offset | width | field      |                                            |
//! |-------:|------:|------------|--------------------------------------------|
//! | 0      | 4     | magic      | `TSSL`                                     |
//! | 4      | 2     | version    | 1                                          |
//! | 6      | 2     | reserved   | 0                                          |
//! | 8      | 8     | generation | +1 per write; the higher valid one wins    |
//! | 16     | 4     | len        | payload bytes                              |
//! | 20     | len   | payload    |                                            |
//! | 20+len | 4     | crc        | CRC-32/IEEE of bytes 0..20+len             |

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::fsutil::sync_dir;
use crate::segment::read_region;

const MAGIC: [u8; 4] = *b"TSSL";
const VERSION: u16 = 1;
const OVERHEAD: usize = 24;

pub(crate) struct SlotFile {
    file: File,
    pub path: PathBuf,
    slot_len: usize,
    generation: u64,
}

fn encode(slot_len: usize, generation: u64, payload: &[u8]) -> io::Result<Vec<u8>> {
    if payload.len() + OVERHEAD > slot_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "record of {} bytes does not fit a {slot_len}-byte slot",
                payload.len()
            ),
        ));
    }
    let mut b = vec![0u8; slot_len];
    b[0..4].copy_from_slice(&MAGIC);
    b[4..6].copy_from_slice(&VERSION.to_le_bytes());
    b[8..16].copy_from_slice(&generation.to_le_bytes());
    b[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    b[20..20 + payload.len()].copy_from_slice(payload);
    let crc = crc32fast::hash(&b[..20 + payload.len()]);
    b[20 + payload.len()..24 + payload.len()].copy_from_slice(&crc.to_le_bytes());
    Ok(b)
}

/// (generation, payload) of a valid slot.
fn decode(b: &[u8]) -> Option<(u64, Vec<u8>)> {
    if b.len() < OVERHEAD || b[0..4] != MAGIC || b[4..6] != VERSION.to_le_bytes() {
        return None;
    }
    let len = u32::from_le_bytes(b[16..20].try_into().ok()?) as usize;
    if 20 + len + 4 > b.len() {
        return None;
    }
    let crc = u32::from_le_bytes(b[20 + len..24 + len].try_into().ok()?);
    if crc32fast::hash(&b[..20 + len]) != crc {
        return None;
    }
    let generation = u64::from_le_bytes(b[8..16].try_into().ok()?);
    Some((generation, b[20..20 + len].to_vec()))
}

/// What opening an existing slot file found.
pub(crate) enum Opened {
    Missing,
    /// Neither slot is valid: the record is lost (the file is damaged).
    Damaged,
    Valid(SlotFile, Vec<u8>),
}

impl SlotFile {
    pub fn open(path: &Path, slot_len: usize) -> io::Result<Opened> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Missing),
            Err(e) => return Err(e),
        };
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a regular file", path.display()),
            ));
        }
        let region = read_region(&file, 0, 2 * slot_len)?;
        let best = [0, 1]
            .iter()
            .filter_map(|&i| {
                let b = region.bytes.get(i * slot_len..(i + 1) * slot_len)?;
                decode(b)
            })
            .max_by_key(|(g, _)| *g);
        let mut sf = Self {
            file,
            path: path.to_path_buf(),
            slot_len,
            generation: 0,
        };
        Ok(match best {
            Some((g, payload)) => {
                sf.generation = g;
                Opened::Valid(sf, payload)
            }
            None => Opened::Damaged,
        })
    }

    /// Creates the file durably (written under a temporary name, synced, renamed,
    /// directory synced) holding `payload`. An existing file is replaced.
    pub fn create(path: &Path, slot_len: usize, payload: &[u8]) -> io::Result<Self> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut both = encode(slot_len, 1, payload)?;
        both.extend(std::iter::repeat_n(0u8, slot_len));
        let r = (|| {
            file.write_all_at(&both, 0)?;
            file.sync_data()?;
            fs::rename(&tmp, path)?;
            sync_dir(dir)
        })();
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            slot_len,
            generation: 1,
        })
    }

    /// Writes `payload` to the other slot and makes it durable.
    pub fn write(&mut self, payload: &[u8]) -> io::Result<()> {
        let generation = self.generation + 1;
        let bytes = encode(self.slot_len, generation, payload)?;
        let at = (generation % 2) * self.slot_len as u64;
        self.file.write_all_at(&bytes, at)?;
        self.file.sync_data()?;
        self.generation = generation;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_slot_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.state");
        let mut f = SlotFile::create(&p, 512, b"one").unwrap();
        f.write(b"two").unwrap();
        f.write(b"three").unwrap();
        drop(f);
        let Opened::Valid(mut f, v) = SlotFile::open(&p, 512).unwrap() else {
            panic!("valid")
        };
        assert_eq!(v, b"three");
        // The next write goes to the other slot; tear it.
        f.write(b"four").unwrap();
        let mut bytes = fs::read(&p).unwrap();
        bytes[20] ^= 0xFF; // slot 0 (generation 4) damaged
        fs::write(&p, &bytes).unwrap();
        let Opened::Valid(_, v) = SlotFile::open(&p, 512).unwrap() else {
            panic!("valid")
        };
        assert_eq!(v, b"three");
        bytes[512 + 20] ^= 0xFF;
        fs::write(&p, &bytes).unwrap();
        assert!(matches!(SlotFile::open(&p, 512).unwrap(), Opened::Damaged));
        assert!(matches!(
            SlotFile::open(&dir.path().join("none"), 512).unwrap(),
            Opened::Missing
        ));
    }

    #[test]
    fn the_file_is_preallocated_to_both_slots() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        SlotFile::create(&p, 4096, b"x").unwrap();
        assert_eq!(fs::metadata(&p).unwrap().len(), 8192);
        assert!(SlotFile::create(&p, 64, &[0u8; 100]).is_err());
    }
}
