//! IETF Token Status List (draft-ietf-oauth-status-list) with 2-bit entries: the licence
//! lifecycle (valid, revoked, suspended) published as one compressed bit array in a JWT of
//! type `statuslist+jwt`.
//!
//! Entry `i` sits in byte `i * 2 / 8` at bit offset `(i * 2) % 8`, least significant bits
//! first; the byte array is zlib-compressed (RFC 1950) and base64url-encoded without padding.

use std::io::{Read as _, Write as _};

use flate2::Compression;
use flate2::write::ZlibEncoder;
use serde_json::{Value, json};

use crate::jws::{b64url, b64url_decode};

/// The JWT header `typ` of a status list token.
pub const STATUS_LIST_TYP: &str = "statuslist+jwt";

/// The fewest entries a list certgate creates may have (so that one index reveals little
/// about how many licences exist: herd privacy).
pub const MIN_ENTRIES: usize = 131_072;

/// The largest decompressed list [`StatusList::decode_lst`] accepts, in bytes (guard against
/// zip bombs); [`StatusList::new`] creates nothing larger either.
pub const MAX_DECOMPRESSED_BYTES: usize = 16 * 1024 * 1024;

/// Bits per entry; the only size certgate uses.
pub const BITS: u8 = 2;

const ENTRIES_PER_BYTE: usize = 4;

/// The status of one licence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// `0x00` VALID.
    Valid = 0,
    /// `0x01` INVALID: the licence is revoked, for good.
    Revoked = 1,
    /// `0x02` SUSPENDED: the licence may become valid again.
    Suspended = 2,
}

impl Status {
    /// The 2-bit value on the wire.
    pub fn value(self) -> u8 {
        self as u8
    }

    /// The status for a 2-bit value; `None` for `0x03` (application specific, unused here).
    pub fn from_value(value: u8) -> Option<Status> {
        match value {
            0 => Some(Status::Valid),
            1 => Some(Status::Revoked),
            2 => Some(Status::Suspended),
            _ => None,
        }
    }
}

/// Why a status list operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatusListError {
    /// A new list must have at least [`MIN_ENTRIES`] entries.
    #[error("a status list needs at least {min} entries, {size} were asked for")]
    TooFewEntries {
        /// Entries asked for.
        size: usize,
        /// [`MIN_ENTRIES`].
        min: usize,
    },
    /// A new list may not exceed [`MAX_DECOMPRESSED_BYTES`] bytes.
    #[error("a status list may have at most {max} entries, {size} were asked for")]
    TooManyEntries {
        /// Entries asked for.
        size: usize,
        /// The most entries allowed.
        max: usize,
    },
    /// The index is outside the list.
    #[error("status index {index} is outside the list of {len} entries")]
    OutOfRange {
        /// The index asked for.
        index: usize,
        /// Entries in the list.
        len: usize,
    },
    /// The entry holds `0x03`, which certgate does not define.
    #[error("status index {index} holds the undefined status value {value}")]
    UnknownStatus {
        /// The index.
        index: usize,
        /// The raw 2-bit value.
        value: u8,
    },
    /// Only 2-bit lists are supported.
    #[error("status lists with {0} bits per entry are not supported; only 2 bits are")]
    UnsupportedBits(u8),
    /// `lst` is not base64url without padding.
    #[error("the status list `lst` is not base64url without padding")]
    NotBase64Url,
    /// `lst` is not a complete, valid zlib stream (or has bytes after it).
    #[error("the status list `lst` is not a valid zlib stream")]
    NotZlib,
    /// `lst` decompresses to more than [`MAX_DECOMPRESSED_BYTES`].
    #[error("the status list decompresses to more than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// `lst` decompresses to nothing.
    #[error("the status list is empty")]
    Empty,
}

/// A 2-bit status list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusList {
    /// Bits per entry, always [`BITS`].
    bits: u8,
    /// The packed entries.
    bytes: Vec<u8>,
}

impl StatusList {
    /// A list of at least `size` entries, all [`Status::Valid`]; `size` is rounded up to a
    /// whole byte (4 entries). At least [`MIN_ENTRIES`] are required.
    pub fn new(size: usize) -> Result<StatusList, StatusListError> {
        if size < MIN_ENTRIES {
            return Err(StatusListError::TooFewEntries {
                size,
                min: MIN_ENTRIES,
            });
        }
        let max = MAX_DECOMPRESSED_BYTES.saturating_mul(ENTRIES_PER_BYTE);
        if size > max {
            return Err(StatusListError::TooManyEntries { size, max });
        }
        Ok(StatusList {
            bits: BITS,
            bytes: vec![0; size.div_ceil(ENTRIES_PER_BYTE)],
        })
    }

    /// Bits per entry (always 2).
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.bytes.len().saturating_mul(ENTRIES_PER_BYTE)
    }

    /// True when the list has no entries (only possible for a decoded list, never here).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The packed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Byte position and bit shift of entry `index`.
    fn locate(&self, index: usize) -> Result<(usize, u32), StatusListError> {
        let byte = index / ENTRIES_PER_BYTE;
        if byte >= self.bytes.len() {
            return Err(StatusListError::OutOfRange {
                index,
                len: self.len(),
            });
        }
        // (index % 4) * 2 is at most 6.
        let shift = ((index % ENTRIES_PER_BYTE) as u32) * u32::from(BITS);
        Ok((byte, shift))
    }

    /// Sets entry `index`.
    pub fn set(&mut self, index: usize, status: Status) -> Result<(), StatusListError> {
        let (byte, shift) = self.locate(index)?;
        let Some(slot) = self.bytes.get_mut(byte) else {
            return Err(StatusListError::OutOfRange {
                index,
                len: self.bytes.len().saturating_mul(ENTRIES_PER_BYTE),
            });
        };
        *slot = (*slot & !(0b11 << shift)) | (status.value() << shift);
        Ok(())
    }

    /// The raw 2-bit value of entry `index` (0..=3).
    pub fn get_raw(&self, index: usize) -> Result<u8, StatusListError> {
        let (byte, shift) = self.locate(index)?;
        let value = self.bytes.get(byte).copied().unwrap_or_default();
        Ok((value >> shift) & 0b11)
    }

    /// The status of entry `index`; `0x03` is [`StatusListError::UnknownStatus`].
    pub fn get(&self, index: usize) -> Result<Status, StatusListError> {
        let value = self.get_raw(index)?;
        Status::from_value(value).ok_or(StatusListError::UnknownStatus { index, value })
    }

    /// The `lst` value: zlib (best compression) of the bytes, base64url without padding.
    ///
    /// Compressing into memory does not fail; should flate2 ever report an error, the list is
    /// emitted as an equally valid zlib stream of stored (uncompressed) blocks instead.
    pub fn encode_lst(&self) -> String {
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::best());
        let compressed = encoder
            .write_all(&self.bytes)
            .and_then(|()| encoder.finish())
            .unwrap_or_else(|_| zlib_stored(&self.bytes));
        b64url(compressed)
    }

    /// Decodes an `lst` value of a list with `bits` bits per entry (only 2 is supported). The
    /// decompressed size is capped at [`MAX_DECOMPRESSED_BYTES`]; the minimum size of
    /// [`StatusList::new`] does not apply (other issuers' lists may be smaller).
    pub fn decode_lst(lst: &str, bits: u8) -> Result<StatusList, StatusListError> {
        decode_with_cap(lst, bits, MAX_DECOMPRESSED_BYTES)
    }
}

/// A zlib stream (RFC 1950) carrying `data` in stored deflate blocks (RFC 1951 section
/// 3.2.4), without compression.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    const MAX_STORED: usize = 65_535;
    let blocks = data.len().div_ceil(MAX_STORED).max(1);
    let mut out = Vec::with_capacity(
        data.len()
            .saturating_add(blocks.saturating_mul(5))
            .saturating_add(6),
    );
    // CMF 0x78 (deflate, 32 KiB window), FLG 0x01: 0x7801 is a multiple of 31.
    out.extend_from_slice(&[0x78, 0x01]);
    let mut chunks = data.chunks(MAX_STORED).peekable();
    if data.is_empty() {
        // One final, empty stored block.
        out.extend_from_slice(&[0x01, 0x00, 0x00, 0xFF, 0xFF]);
    }
    while let Some(chunk) = chunks.next() {
        let is_final = chunks.peek().is_none();
        out.push(u8::from(is_final));
        // chunks() yields at most MAX_STORED = u16::MAX bytes.
        let len = u16::try_from(chunk.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

/// Adler-32 (RFC 1950 section 8).
fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65_521;
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % MOD;
        b = (b + a) % MOD;
    }
    (b << 16) | a
}

fn decode_with_cap(lst: &str, bits: u8, cap: usize) -> Result<StatusList, StatusListError> {
    if bits != BITS {
        return Err(StatusListError::UnsupportedBits(bits));
    }
    let compressed = b64url_decode(lst).map_err(|_| StatusListError::NotBase64Url)?;
    let mut decoder = flate2::bufread::ZlibDecoder::new(compressed.as_slice());
    let mut bytes = Vec::new();
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    (&mut decoder)
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|_| StatusListError::NotZlib)?;
    if bytes.len() > cap {
        return Err(StatusListError::TooLarge { limit: cap });
    }
    // The stream must have ended exactly at the end of the input.
    if usize::try_from(decoder.total_in()).ok() != Some(compressed.len()) {
        return Err(StatusListError::NotZlib);
    }
    if bytes.is_empty() {
        return Err(StatusListError::Empty);
    }
    Ok(StatusList { bits, bytes })
}

/// The payload of a status list token (sign it with header `typ` [`STATUS_LIST_TYP`]):
/// `{"sub", "iat", "exp", "ttl", "status_list": {"bits": 2, "lst"}}`.
pub fn status_list_payload(
    sub_uri: &str,
    iat: i64,
    exp: i64,
    ttl: i64,
    list: &StatusList,
) -> Value {
    json!({
        "sub": sub_uri,
        "iat": iat,
        "exp": exp,
        "ttl": ttl,
        "status_list": {
            "bits": list.bits,
            "lst": list.encode_lst(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 2-bit example of draft-ietf-oauth-status-list.
    const DRAFT_VALUES: [u8; 12] = [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3];
    const DRAFT_BYTES: [u8; 3] = [0xC9, 0x44, 0xF9];
    const DRAFT_LST: &str = "eNo76fITAAPfAgc";

    #[test]
    fn draft_vector_decodes_to_the_draft_values() {
        let list = StatusList::decode_lst(DRAFT_LST, 2).unwrap();
        assert_eq!(list.as_bytes(), DRAFT_BYTES);
        for (i, want) in DRAFT_VALUES.iter().enumerate() {
            assert_eq!(list.get_raw(i).unwrap(), *want, "index {i}");
        }
        assert_eq!(list.get(0).unwrap(), Status::Revoked);
        assert_eq!(list.get(1).unwrap(), Status::Suspended);
        assert_eq!(list.get(2).unwrap(), Status::Valid);
        assert_eq!(
            list.get(3),
            Err(StatusListError::UnknownStatus { index: 3, value: 3 })
        );
    }

    #[test]
    fn draft_vector_encodes_to_the_draft_lst() {
        let list = StatusList {
            bits: 2,
            bytes: DRAFT_BYTES.to_vec(),
        };
        assert_eq!(list.encode_lst(), DRAFT_LST);
    }

    #[test]
    fn set_and_get_round_trip_at_first_and_last_index() {
        let mut list = StatusList::new(MIN_ENTRIES).unwrap();
        assert_eq!(list.len(), MIN_ENTRIES);
        let last = list.len() - 1;
        assert_eq!(list.get(0).unwrap(), Status::Valid);
        assert_eq!(list.get(last).unwrap(), Status::Valid);
        list.set(0, Status::Revoked).unwrap();
        list.set(1, Status::Suspended).unwrap();
        list.set(last, Status::Suspended).unwrap();
        list.set(last - 1, Status::Revoked).unwrap();
        assert_eq!(list.get(0).unwrap(), Status::Revoked);
        assert_eq!(list.get(1).unwrap(), Status::Suspended);
        assert_eq!(list.get(2).unwrap(), Status::Valid);
        assert_eq!(list.get(last).unwrap(), Status::Suspended);
        assert_eq!(list.get(last - 1).unwrap(), Status::Revoked);
        // Bit layout: entry 0 in the low bits of byte 0, the last entry in the high bits.
        assert_eq!(list.as_bytes()[0], 0b0000_1001);
        assert_eq!(list.as_bytes()[list.as_bytes().len() - 1], 0b1001_0000);
        // Suspended -> valid again, revoked stays.
        list.set(1, Status::Valid).unwrap();
        assert_eq!(list.get(1).unwrap(), Status::Valid);
        assert_eq!(list.get(0).unwrap(), Status::Revoked);

        let decoded = StatusList::decode_lst(&list.encode_lst(), 2).unwrap();
        assert_eq!(decoded, list);
    }

    #[test]
    fn out_of_range_is_an_error() {
        let mut list = StatusList::new(MIN_ENTRIES).unwrap();
        let err = StatusListError::OutOfRange {
            index: MIN_ENTRIES,
            len: MIN_ENTRIES,
        };
        assert_eq!(list.get(MIN_ENTRIES), Err(err.clone()));
        assert_eq!(list.set(MIN_ENTRIES, Status::Revoked), Err(err));
        assert!(matches!(
            list.get(usize::MAX),
            Err(StatusListError::OutOfRange { .. })
        ));
    }

    #[test]
    fn size_limits_of_new() {
        assert_eq!(
            StatusList::new(MIN_ENTRIES - 1),
            Err(StatusListError::TooFewEntries {
                size: MIN_ENTRIES - 1,
                min: MIN_ENTRIES
            })
        );
        assert!(matches!(
            StatusList::new(usize::MAX),
            Err(StatusListError::TooManyEntries { .. })
        ));
        // Rounded up to whole bytes.
        assert_eq!(
            StatusList::new(MIN_ENTRIES + 1).unwrap().len(),
            MIN_ENTRIES + 4
        );
    }

    #[test]
    fn garbage_lst_is_an_error() {
        assert_eq!(
            StatusList::decode_lst("eNo7+fITAAPfAgc", 2),
            Err(StatusListError::NotBase64Url)
        );
        assert_eq!(
            StatusList::decode_lst("eNo76fITAAPfAgc=", 2),
            Err(StatusListError::NotBase64Url)
        );
        assert_eq!(
            StatusList::decode_lst(&b64url("not zlib at all"), 2),
            Err(StatusListError::NotZlib)
        );
        // Truncated stream.
        let compressed = b64url_decode(DRAFT_LST).unwrap();
        assert_eq!(
            StatusList::decode_lst(&b64url(&compressed[..compressed.len() - 2]), 2),
            Err(StatusListError::NotZlib)
        );
        // Trailing bytes after the stream.
        let mut trailing = compressed.clone();
        trailing.push(0);
        assert_eq!(
            StatusList::decode_lst(&b64url(&trailing), 2),
            Err(StatusListError::NotZlib)
        );
        // Corrupted checksum.
        let mut corrupt = compressed;
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xFF;
        assert_eq!(
            StatusList::decode_lst(&b64url(&corrupt), 2),
            Err(StatusListError::NotZlib)
        );
        assert_eq!(StatusList::decode_lst("", 2), Err(StatusListError::NotZlib));
        assert_eq!(
            StatusList::decode_lst(DRAFT_LST, 1),
            Err(StatusListError::UnsupportedBits(1))
        );
    }

    #[test]
    fn stored_block_fallback_is_valid_zlib() {
        for data in [
            vec![],
            DRAFT_BYTES.to_vec(),
            (0..200_000u32).map(|i| (i % 251) as u8).collect(),
        ] {
            let stored = zlib_stored(&data);
            let mut inflated = Vec::new();
            flate2::read::ZlibDecoder::new(stored.as_slice())
                .read_to_end(&mut inflated)
                .unwrap();
            assert_eq!(inflated, data);
            if !data.is_empty() {
                let list = StatusList::decode_lst(&b64url(&stored), 2).unwrap();
                assert_eq!(list.as_bytes(), data.as_slice());
            }
        }
    }

    #[test]
    fn zip_bomb_is_capped() {
        fn zeros_lst(len: usize) -> String {
            let mut encoder = ZlibEncoder::new(Vec::new(), Compression::best());
            encoder.write_all(&vec![0u8; len]).unwrap();
            b64url(encoder.finish().unwrap())
        }
        let bomb = zeros_lst(MAX_DECOMPRESSED_BYTES + 1);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        assert_eq!(
            StatusList::decode_lst(&bomb, 2),
            Err(StatusListError::TooLarge {
                limit: MAX_DECOMPRESSED_BYTES
            })
        );
        assert_eq!(
            decode_with_cap(&zeros_lst(1025), 2, 1024),
            Err(StatusListError::TooLarge { limit: 1024 })
        );
        assert_eq!(
            decode_with_cap(&zeros_lst(1024), 2, 1024).unwrap().len(),
            4096
        );
    }

    #[test]
    fn payload_has_the_draft_shape() {
        let mut list = StatusList::new(MIN_ENTRIES).unwrap();
        list.set(42, Status::Revoked).unwrap();
        let payload = status_list_payload(
            "https://status.example/lists/1",
            1_700_000_000,
            1_700_086_400,
            43_200,
            &list,
        );
        assert_eq!(payload["sub"], "https://status.example/lists/1");
        assert_eq!(payload["iat"], 1_700_000_000);
        assert_eq!(payload["exp"], 1_700_086_400);
        assert_eq!(payload["ttl"], 43_200);
        assert_eq!(payload["status_list"]["bits"], 2);
        let lst = payload["status_list"]["lst"].as_str().unwrap();
        let decoded = StatusList::decode_lst(lst, 2).unwrap();
        assert_eq!(decoded.get(42).unwrap(), Status::Revoked);
        assert_eq!(decoded.get(41).unwrap(), Status::Valid);
        assert_eq!(STATUS_LIST_TYP, "statuslist+jwt");
    }
}
