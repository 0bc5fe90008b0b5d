//! EC2's UefiData: the variable store RegisterImage takes, in AWS's own
//! format (as the MIT-licensed python-uefivars tool documents it).
//!
//! The blob is base64 of: the magic `AMZNUEFI` (8 bytes), a CRC32C (4
//! bytes, little-endian) of everything after it, the version 0 (4 bytes),
//! then a zlib stream of: the number of variables (u64), and per variable
//! its name (u64 length, UTF-8, no NUL), its data (u64 length, bytes), its
//! vendor GUID (16 bytes, UEFI's byte order), its attributes (u32) and,
//! for a time-based authenticated variable, its EFI_TIME (16 bytes) and a
//! digest (u64 length, 32 bytes; zeros: none). All integers little-endian.
//! python-uefivars compresses with a preset zlib dictionary; a stream made
//! without one is plain zlib, which its reader (zlib's inflate) takes too.

use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;

use super::efi::{TIME_BASED_AUTHENTICATED_WRITE_ACCESS, Variable, guid_bytes, guid_from_bytes};

const MAGIC: &[u8; 8] = b"AMZNUEFI";
const VERSION: u32 = 0;
/// RegisterImage's limit on UefiData, in base64 characters.
pub const MAX_CHARS: usize = 64_000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AwsBlobError {
    #[error("not base64 text (an AWS UefiData blob is base64)")]
    NotBase64,
    #[error("no AMZNUEFI magic: not an AWS UefiData blob")]
    NoMagic,
    #[error("its CRC32C does not match: the blob is damaged or cut short")]
    BadChecksum,
    #[error("version {0}; imgforge knows version 0")]
    UnknownVersion(u32),
    #[error(
        "{chars} base64 characters; RegisterImage takes at most {MAX_CHARS}: enrol fewer \
         certificates or hashes"
    )]
    TooLong { chars: usize },
    #[error("the variable list cannot be read: {0}")]
    Garbled(String),
}

/// The blob (base64 text) holding `variables`, checked against EC2's limit.
pub fn encode(variables: &[Variable]) -> Result<String, AwsBlobError> {
    let mut raw = Vec::new();
    raw.extend_from_slice(&(variables.len() as u64).to_le_bytes());
    for var in variables {
        put_data(&mut raw, var.name.as_bytes());
        put_data(&mut raw, &var.data);
        raw.extend_from_slice(&guid_bytes(&var.guid));
        raw.extend_from_slice(&var.attributes.to_le_bytes());
        if var.attributes & TIME_BASED_AUTHENTICATED_WRITE_ACCESS != 0 {
            raw.extend_from_slice(&var.timestamp);
            put_data(&mut raw, &[0; 32]);
        }
    }
    let mut zlib = ZlibEncoder::new(Vec::new(), Compression::best());
    zlib.write_all(&raw).expect("writing to memory");
    let mut body = VERSION.to_le_bytes().to_vec();
    body.extend(zlib.finish().expect("writing to memory"));
    let mut blob = MAGIC.to_vec();
    blob.extend_from_slice(&crc32c(&body).to_le_bytes());
    blob.extend(body);
    let text = BASE64.encode(blob);
    within_limit(&text)?;
    Ok(text)
}

fn put_data(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(data);
}

fn within_limit(text: &str) -> Result<(), AwsBlobError> {
    if text.len() > MAX_CHARS {
        return Err(AwsBlobError::TooLong { chars: text.len() });
    }
    Ok(())
}

/// Checks a blob someone else made (`upload --uefi-data FILE`): base64,
/// magic, checksum, version and EC2's limit; answers it without
/// surrounding whitespace. Its variables are not read (a blob made with
/// python-uefivars needs that tool's preset dictionary).
pub fn check(text: &str) -> Result<String, AwsBlobError> {
    let text = text.trim();
    within_limit(text)?;
    let blob = BASE64.decode(text).map_err(|_| AwsBlobError::NotBase64)?;
    body_of(&blob)?;
    Ok(text.to_string())
}

/// The zlib stream after the checked header.
fn body_of(blob: &[u8]) -> Result<&[u8], AwsBlobError> {
    if blob.len() < 16 || &blob[..8] != MAGIC {
        return Err(AwsBlobError::NoMagic);
    }
    let crc = u32::from_le_bytes(blob[8..12].try_into().unwrap());
    if crc32c(&blob[12..]) != crc {
        return Err(AwsBlobError::BadChecksum);
    }
    let version = u32::from_le_bytes(blob[12..16].try_into().unwrap());
    if version != VERSION {
        return Err(AwsBlobError::UnknownVersion(version));
    }
    Ok(&blob[16..])
}

/// The variables of a blob made without a preset dictionary (imgforge's).
pub fn decode(text: &str) -> Result<Vec<Variable>, AwsBlobError> {
    let blob = BASE64
        .decode(text.trim())
        .map_err(|_| AwsBlobError::NotBase64)?;
    let mut raw = Vec::new();
    ZlibDecoder::new(body_of(&blob)?)
        .read_to_end(&mut raw)
        .map_err(|e| AwsBlobError::Garbled(e.to_string()))?;
    let mut reader = Reader { raw: &raw, at: 0 };
    let count = reader.u64()?;
    (0..count).map(|_| reader.variable()).collect()
}

struct Reader<'a> {
    raw: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], AwsBlobError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.raw.len());
        let end = end.ok_or_else(|| AwsBlobError::Garbled(format!("cut short at {}", self.at)))?;
        let bytes = &self.raw[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u64(&mut self) -> Result<u64, AwsBlobError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn data(&mut self) -> Result<Vec<u8>, AwsBlobError> {
        let len = self.u64()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    fn variable(&mut self) -> Result<Variable, AwsBlobError> {
        let name = String::from_utf8(self.data()?)
            .map_err(|_| AwsBlobError::Garbled("a name is not UTF-8".into()))?;
        let data = self.data()?;
        let guid = guid_from_bytes(self.take(16)?.try_into().unwrap());
        let attributes = u32::from_le_bytes(self.take(4)?.try_into().unwrap());
        let mut timestamp = [0; 16];
        if attributes & TIME_BASED_AUTHENTICATED_WRITE_ACCESS != 0 {
            timestamp.copy_from_slice(self.take(16)?);
            self.data()?; // the digest
        }
        Ok(Variable {
            name,
            guid,
            attributes,
            timestamp,
            data,
        })
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82f63b78), as the format's
/// checksum.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82f6_3b78 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secureboot::efi::{GLOBAL_VARIABLE, IMAGE_SECURITY_DATABASE};

    fn vars() -> Vec<Variable> {
        vec![
            Variable::secure_boot("PK", GLOBAL_VARIABLE, [1; 16], b"pk".to_vec()),
            Variable::secure_boot("db", IMAGE_SECURITY_DATABASE, [2; 16], vec![3; 300]),
            Variable {
                name: "Plain".into(),
                guid: GLOBAL_VARIABLE,
                attributes: 7,
                timestamp: [0; 16],
                data: vec![1],
            },
        ]
    }

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn a_blob_round_trips_and_has_the_header() {
        let text = encode(&vars()).unwrap();
        let blob = BASE64.decode(&text).unwrap();
        assert_eq!(&blob[..8], b"AMZNUEFI");
        assert_eq!(&blob[12..16], &[0, 0, 0, 0]);
        assert_eq!(decode(&text).unwrap(), vars());
        assert_eq!(check(&format!("{text}\n")).unwrap(), text);
    }

    #[test]
    fn damaged_blobs_are_refused() {
        let text = encode(&vars()).unwrap();
        let mut blob = BASE64.decode(&text).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        assert_eq!(check(&BASE64.encode(&blob)), Err(AwsBlobError::BadChecksum));
        assert_eq!(check("not base64!"), Err(AwsBlobError::NotBase64));
        assert_eq!(check(&BASE64.encode([0u8; 20])), Err(AwsBlobError::NoMagic));
    }

    #[test]
    fn the_64000_character_limit_holds() {
        // Incompressible data: 51,200 bytes of digests are over 64,000 base64 characters.
        use sha2::Digest;
        let noise: Vec<u8> = (0u32..1600)
            .flat_map(|i| sha2::Sha256::digest(i.to_le_bytes()).to_vec())
            .collect();
        let big = Variable::secure_boot("dbx", IMAGE_SECURITY_DATABASE, [0; 16], noise);
        assert!(matches!(
            encode(&[big]),
            Err(AwsBlobError::TooLong { chars }) if chars > MAX_CHARS
        ));
        assert!(matches!(
            check(&"A".repeat(MAX_CHARS + 4)),
            Err(AwsBlobError::TooLong { .. })
        ));
    }
}
