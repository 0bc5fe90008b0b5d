//! UEFI's own encodings of the Secure Boot variables: GUIDs in their mixed
//! byte order, EFI_TIME, EFI_SIGNATURE_LIST, and the attributes an
//! authenticated variable carries (UEFI 2.10, sections 8.2 and 32.4).

use uuid::Uuid;

use crate::sys::calendar::civil_from_days;

/// EFI_GLOBAL_VARIABLE: PK and KEK live under it.
pub const GLOBAL_VARIABLE: Uuid = uuid::uuid!("8be4df61-93ca-11d2-aa0d-00e098032b8c");
/// EFI_IMAGE_SECURITY_DATABASE_GUID: db and dbx.
pub const IMAGE_SECURITY_DATABASE: Uuid = uuid::uuid!("d719b2cb-3d3a-4596-a3bc-dad00e67656f");
/// EFI_CERT_X509_GUID: a signature list of DER certificates.
pub const CERT_X509: Uuid = uuid::uuid!("a5c059a1-94e4-4aa7-87b5-ab155c2bf072");

pub const NON_VOLATILE: u32 = 0x01;
pub const BOOTSERVICE_ACCESS: u32 = 0x02;
pub const RUNTIME_ACCESS: u32 = 0x04;
pub const TIME_BASED_AUTHENTICATED_WRITE_ACCESS: u32 = 0x20;
/// What PK, KEK, db and dbx carry: kept across resets, readable by the OS,
/// changed only by a write signed with a newer timestamp.
pub const SECURE_BOOT_ATTRIBUTES: u32 =
    NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS;

/// Bytes of EFI_SIGNATURE_LIST's fixed header (type, three sizes).
const LIST_HEADER: usize = 16 + 4 + 4 + 4;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EfiError {
    #[error("a signature list is cut short at byte {0}")]
    Truncated(usize),
    #[error("a signature list at byte {0} has inconsistent sizes")]
    BadSizes(usize),
}

/// A GUID as UEFI stores it: the first three fields little-endian.
pub fn guid_bytes(guid: &Uuid) -> [u8; 16] {
    guid.to_bytes_le()
}

pub fn guid_from_bytes(bytes: [u8; 16]) -> Uuid {
    Uuid::from_bytes_le(bytes)
}

/// EFI_TIME in UTC (16 bytes: year, month, day, hour, minute, second, pad,
/// nanosecond, time zone, daylight, pad); authenticated variables keep the
/// time of their last write, and a later write must be newer.
pub fn efi_time(unix_seconds: u64) -> [u8; 16] {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut time = [0u8; 16];
    time[0..2].copy_from_slice(&(year as u16).to_le_bytes());
    time[2] = month as u8;
    time[3] = day as u8;
    time[4] = (secs / 3600) as u8;
    time[5] = (secs / 60 % 60) as u8;
    time[6] = (secs % 60) as u8;
    time
}

/// One EFI_SIGNATURE_DATA: who owns the entry, and the entry (a DER
/// certificate, or a hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureEntry {
    pub owner: Uuid,
    pub data: Vec<u8>,
}

/// One EFI_SIGNATURE_LIST: entries of one type and one size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureList {
    pub signature_type: Uuid,
    pub entries: Vec<SignatureEntry>,
}

impl SignatureList {
    /// A list holding one X.509 certificate (each certificate has its own
    /// size, so each gets its own list).
    pub fn x509(owner: Uuid, der: Vec<u8>) -> Self {
        Self {
            signature_type: CERT_X509,
            entries: vec![SignatureEntry { owner, data: der }],
        }
    }

    /// The list's bytes; every entry must be as long as the first.
    pub fn encode(&self) -> Vec<u8> {
        let entry_size = 16 + self.entries.first().map_or(0, |e| e.data.len());
        let list_size = LIST_HEADER + entry_size * self.entries.len();
        let mut out = Vec::with_capacity(list_size);
        out.extend_from_slice(&guid_bytes(&self.signature_type));
        out.extend_from_slice(&(list_size as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // no signature header
        out.extend_from_slice(&(entry_size as u32).to_le_bytes());
        for entry in &self.entries {
            debug_assert_eq!(entry.data.len() + 16, entry_size);
            out.extend_from_slice(&guid_bytes(&entry.owner));
            out.extend_from_slice(&entry.data);
        }
        out
    }
}

/// The bytes of a signature database (a variable's data): its lists, one
/// after the other.
pub fn encode_lists(lists: &[SignatureList]) -> Vec<u8> {
    lists.iter().flat_map(SignatureList::encode).collect()
}

/// Reads a signature database (PK, KEK, db or dbx data).
pub fn decode_lists(data: &[u8]) -> Result<Vec<SignatureList>, EfiError> {
    let mut lists = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let header = data
            .get(at..at + LIST_HEADER)
            .ok_or(EfiError::Truncated(at))?;
        let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap()) as usize;
        let (list_size, header_size, entry_size) = (word(16), word(20), word(24));
        let body = LIST_HEADER + header_size;
        if entry_size < 16 || list_size < body || !(list_size - body).is_multiple_of(entry_size) {
            return Err(EfiError::BadSizes(at));
        }
        let list = data
            .get(at..at + list_size)
            .ok_or(EfiError::Truncated(at))?;
        let entries = list[body..]
            .chunks(entry_size)
            .map(|chunk| SignatureEntry {
                owner: guid_from_bytes(chunk[..16].try_into().unwrap()),
                data: chunk[16..].to_vec(),
            })
            .collect();
        lists.push(SignatureList {
            signature_type: guid_from_bytes(header[..16].try_into().unwrap()),
            entries,
        });
        at += list_size;
    }
    Ok(lists)
}

/// A UEFI variable as a variable store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub guid: Uuid,
    pub attributes: u32,
    /// EFI_TIME of the last write (authenticated variables only).
    pub timestamp: [u8; 16],
    pub data: Vec<u8>,
}

impl Variable {
    /// An authenticated Secure Boot variable (PK, KEK, db, dbx).
    pub fn secure_boot(name: &str, guid: Uuid, timestamp: [u8; 16], data: Vec<u8>) -> Self {
        Self {
            name: name.to_string(),
            guid,
            attributes: SECURE_BOOT_ATTRIBUTES,
            timestamp,
            data,
        }
    }

    /// The name as UEFI stores it: UTF-16LE with a terminating NUL.
    pub fn name_utf16(&self) -> Vec<u8> {
        self.name
            .encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_stored_mixed_endian() {
        // The first bytes of every X.509 list in Debian's OVMF_VARS_4M.ms.fd.
        assert_eq!(
            hex::encode(guid_bytes(&CERT_X509)),
            "a159c0a5e494a74a87b5ab155c2bf072"
        );
        assert_eq!(
            guid_from_bytes(guid_bytes(&GLOBAL_VARIABLE)),
            GLOBAL_VARIABLE
        );
    }

    #[test]
    fn efi_time_of_known_instants() {
        // 2025-03-10 02:53:39 UTC, the time in Debian's enrolled store.
        assert_eq!(
            hex::encode(efi_time(1_741_575_219)),
            "e907030a023527000000000000000000"
        );
        assert_eq!(&efi_time(0)[..4], &[0xb2, 0x07, 1, 1]);
        // A leap day.
        assert_eq!(&efi_time(951_782_400)[..4], &[0xd0, 0x07, 2, 29]);
    }

    #[test]
    fn a_certificate_list_encodes_and_decodes() {
        let owner = uuid::uuid!("77fa9abd-0359-4d32-bd60-28f4e78f784b");
        let lists = vec![
            SignatureList::x509(owner, vec![0x30, 0x82, 1, 2, 3]),
            SignatureList::x509(GLOBAL_VARIABLE, vec![9; 40]),
        ];
        let bytes = encode_lists(&lists);
        assert_eq!(bytes.len(), (28 + 16 + 5) + (28 + 16 + 40));
        // SignatureListSize, SignatureHeaderSize, SignatureSize.
        assert_eq!(&bytes[16..28], &[49, 0, 0, 0, 0, 0, 0, 0, 21, 0, 0, 0]);
        assert_eq!(&bytes[28..44], &guid_bytes(&owner));
        assert_eq!(decode_lists(&bytes).unwrap(), lists);
    }

    #[test]
    fn broken_lists_are_refused() {
        let bytes = SignatureList::x509(GLOBAL_VARIABLE, vec![1; 8]).encode();
        assert_eq!(
            decode_lists(&bytes[..bytes.len() - 1]),
            Err(EfiError::Truncated(0))
        );
        let mut bad = bytes.clone();
        bad[24] = 7; // an entry smaller than its owner GUID
        assert_eq!(decode_lists(&bad), Err(EfiError::BadSizes(0)));
    }

    #[test]
    fn names_are_nul_terminated_utf16() {
        let var = Variable::secure_boot("db", IMAGE_SECURITY_DATABASE, [0; 16], vec![]);
        assert_eq!(var.name_utf16(), vec![b'd', 0, b'b', 0, 0, 0]);
        assert_eq!(var.attributes, 0x27);
    }
}
