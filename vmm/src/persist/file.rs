//! The snapshot state file: a magic number, the format version, the
//! serialized state (JSON, so that an operator can read it) and a CRC-32
//! over everything before it. The file is hostile input: its size is
//! bounded before it is read, and every check runs before the JSON is
//! parsed.

use super::SnapshotError;
use std::io::Read;
use std::path::Path;

/// The file's first bytes.
pub const MAGIC: [u8; 8] = *b"BRIQSNAP";
/// The format this brique writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The largest state file brique reads (a state is some KiB per vCPU).
pub const MAX_STATE_FILE_BYTES: u64 = 32 << 20;
/// Magic, version and payload length.
const HEADER_LEN: usize = 8 + 4 + 8;
const CHECKSUM_LEN: usize = 4;

/// The file's bytes for `payload`.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len() + CHECKSUM_LEN);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(payload);
    let checksum = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    bytes
}

/// The payload of a state file's bytes, once magic, version, length and
/// checksum are right.
pub fn decode(bytes: &[u8]) -> Result<&[u8], SnapshotError> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(SnapshotError::NotASnapshot);
    }
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(SnapshotError::Truncated {
            len: bytes.len() as u64,
        });
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[12..20]);
    let payload_len = u64::from_le_bytes(len_bytes);
    let expected = (HEADER_LEN + CHECKSUM_LEN) as u64;
    let total = payload_len.checked_add(expected);
    if total != Some(bytes.len() as u64) {
        return Err(SnapshotError::Truncated {
            len: bytes.len() as u64,
        });
    }
    let (covered, stored) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    let computed = crc32fast::hash(covered);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    Ok(&covered[HEADER_LEN..])
}

/// Reads a state file, refusing one over [`MAX_STATE_FILE_BYTES`] before
/// reading it.
pub fn read(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let io_error = |source| SnapshotError::Io {
        what: "read the snapshot file",
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let len = file.metadata().map_err(io_error)?.len();
    if len > MAX_STATE_FILE_BYTES {
        return Err(SnapshotError::TooLarge {
            len,
            max: MAX_STATE_FILE_BYTES,
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_STATE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_STATE_FILE_BYTES {
        return Err(SnapshotError::TooLarge {
            len: bytes.len() as u64,
            max: MAX_STATE_FILE_BYTES,
        });
    }
    Ok(bytes)
}

/// Writes a state file: to a temporary name beside it, synced, then
/// renamed, so that a failed write never leaves a half file at `path`.
pub fn write(path: &Path, payload: &[u8]) -> Result<(), SnapshotError> {
    let io_error = |source| SnapshotError::Io {
        what: "write the snapshot file",
        path: path.to_owned(),
        source,
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".brique-tmp-{}", std::process::id()));
    let temporary = std::path::PathBuf::from(temporary);
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        std::io::Write::write_all(&mut file, &encode(payload))?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_round_trips() {
        let bytes = encode(b"{\"hello\":1}");
        assert_eq!(&bytes[..8], b"BRIQSNAP");
        assert_eq!(decode(&bytes).unwrap(), b"{\"hello\":1}");
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = encode(b"{\"state\":[1,2,3]}");
        for index in 0..bytes.len() {
            let mut corrupt = bytes.clone();
            corrupt[index] ^= 0x01;
            assert!(
                decode(&corrupt).is_err(),
                "byte {index} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn foreign_truncated_and_future_files_are_refused_by_name() {
        let bytes = encode(b"{}");
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(SnapshotError::Truncated { .. })
        ));
        assert!(matches!(
            decode(b"BRIQ"),
            Err(SnapshotError::Truncated { .. })
        ));
        let mut foreign = bytes.clone();
        foreign[..8].copy_from_slice(b"QEVM\0\0\0\x03");
        assert!(matches!(decode(&foreign), Err(SnapshotError::NotASnapshot)));
        let mut future = bytes.clone();
        future[8..12].copy_from_slice(&2u32.to_le_bytes());
        let err = decode(&future).unwrap_err();
        assert!(err.to_string().contains("format version 2"), "{err}");
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 16]);
        assert!(matches!(
            decode(&longer),
            Err(SnapshotError::Truncated { .. })
        ));
        let mut huge_len = bytes;
        huge_len[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode(&huge_len),
            Err(SnapshotError::Truncated { .. })
        ));
    }

    #[test]
    fn an_oversized_file_is_refused_before_it_is_read() {
        let dir = std::env::temp_dir().join(format!("brique-state-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("huge.snap");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_STATE_FILE_BYTES + 1).unwrap();
        assert!(matches!(read(&path), Err(SnapshotError::TooLarge { .. })));
        write(&path, b"{}").unwrap();
        assert_eq!(decode(&read(&path).unwrap()).unwrap(), b"{}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
