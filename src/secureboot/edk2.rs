//! edk2's variable store file (OVMF_VARS*.fd, AAVMF_VARS*.fd): a firmware
//! volume whose first block holds the authenticated variable store. Read to
//! take Microsoft's certificates out of the distribution's enrolled store
//! and to convert a user's store (`upload --uefi-data FILE`); written to
//! put the shipped Secure Boot variables into boot-test's copy.
//!
//! Layout (edk2 MdeModulePkg, VariableFormat.h): the firmware volume header
//! (`_FVH` at byte 40, its length at 48), then VARIABLE_STORE_HEADER (the
//! authenticated store's GUID, its size, format 0x5a, state 0xfe), then
//! variables on 4-byte boundaries, each a 60-byte header (start id 0x55aa,
//! state, attributes, monotonic count, EFI_TIME, public key index, name
//! size, data size, vendor GUID), the UTF-16 name and the data. Free space
//! is 0xff.

use uuid::Uuid;

use super::efi::{Variable, guid_bytes, guid_from_bytes};

/// gEfiAuthenticatedVariableGuid: a store whose variables carry timestamps.
const AUTHENTICATED_STORE: Uuid = uuid::uuid!("aaf32c78-947b-439a-a180-2e144ec37792");
const STORE_HEADER: usize = 28;
const VARIABLE_HEADER: usize = 60;
const START_ID: u16 = 0x55aa;
/// The variable's states: written in full; superseded.
const VAR_ADDED: u8 = 0x3f;
const VAR_IN_DELETED_TRANSITION: u8 = 0xfe;
const VAR_DELETED: u8 = 0xfd;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Edk2Error {
    #[error("not an edk2 variable store: {0}")]
    NotAStore(&'static str),
    #[error("the variable at byte {0} runs past the end of the store")]
    Truncated(usize),
    #[error("the variable at byte {0} has a name that is not UTF-16")]
    BadName(usize),
    #[error("the store has {free} bytes free and the variables need {needed}")]
    Full { free: usize, needed: usize },
}

/// Where the variables are in the file.
struct StoreBounds {
    first: usize,
    end: usize,
}

fn bounds(file: &[u8]) -> Result<StoreBounds, Edk2Error> {
    if file.get(40..44) != Some(b"_FVH") {
        return Err(Edk2Error::NotAStore(
            "no firmware volume signature _FVH at byte 40",
        ));
    }
    let header_len = u16::from_le_bytes([file[48], file[49]]) as usize;
    let store = file
        .get(header_len..header_len + STORE_HEADER)
        .ok_or(Edk2Error::NotAStore("the variable store header is missing"))?;
    if guid_from_bytes(store[..16].try_into().unwrap()) != AUTHENTICATED_STORE {
        return Err(Edk2Error::NotAStore(
            "the store is not an authenticated variable store",
        ));
    }
    let size = u32::from_le_bytes(store[16..20].try_into().unwrap()) as usize;
    let end = header_len + size;
    if size < STORE_HEADER || end > file.len() {
        return Err(Edk2Error::NotAStore("the store's size exceeds the file"));
    }
    Ok(StoreBounds {
        first: align4(header_len + STORE_HEADER),
        end,
    })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One variable record where it sits in the file.
struct Record {
    offset: usize,
    state: u8,
    variable: Variable,
}

fn u32_at(bytes: &[u8], at: usize) -> usize {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
}

/// Every record, deleted ones included, and the offset of the free space.
fn records(file: &[u8]) -> Result<(Vec<Record>, usize), Edk2Error> {
    let bounds = bounds(file)?;
    let mut out = Vec::new();
    let mut at = bounds.first;
    while at + VARIABLE_HEADER <= bounds.end
        && u16::from_le_bytes([file[at], file[at + 1]]) == START_ID
    {
        let header = &file[at..at + VARIABLE_HEADER];
        let (name_size, data_size) = (u32_at(header, 36), u32_at(header, 40));
        let name_at = at + VARIABLE_HEADER;
        let data_at = name_at + name_size;
        let next = align4(data_at + data_size);
        if data_at + data_size > bounds.end || !name_size.is_multiple_of(2) {
            return Err(Edk2Error::Truncated(at));
        }
        let units: Vec<u16> = file[name_at..data_at]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let name = String::from_utf16(&units).map_err(|_| Edk2Error::BadName(at))?;
        out.push(Record {
            offset: at,
            state: header[2],
            variable: Variable {
                name,
                guid: guid_from_bytes(header[44..60].try_into().unwrap()),
                attributes: u32_at(header, 4) as u32,
                timestamp: header[16..32].try_into().unwrap(),
                data: file[data_at..data_at + data_size].to_vec(),
            },
        });
        at = next;
    }
    Ok((out, at.min(bounds.end)))
}

fn is_live(state: u8) -> bool {
    state == VAR_ADDED || state == VAR_ADDED & VAR_IN_DELETED_TRANSITION
}

/// The store's live variables, in the order they were written.
pub fn read(file: &[u8]) -> Result<Vec<Variable>, Edk2Error> {
    let (records, _) = records(file)?;
    Ok(records
        .into_iter()
        .filter(|r| is_live(r.state))
        .map(|r| r.variable)
        .collect())
}

/// True when `file` starts like an edk2 variable store file.
pub fn looks_like_store(file: &[u8]) -> bool {
    bounds(file).is_ok()
}

/// The record of one variable, as edk2 writes it.
fn encode(variable: &Variable) -> Vec<u8> {
    let name = variable.name_utf16();
    let mut out = Vec::with_capacity(VARIABLE_HEADER + name.len() + variable.data.len() + 3);
    out.extend_from_slice(&START_ID.to_le_bytes());
    out.push(VAR_ADDED);
    out.push(0);
    out.extend_from_slice(&variable.attributes.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // monotonic count
    out.extend_from_slice(&variable.timestamp);
    out.extend_from_slice(&0u32.to_le_bytes()); // public key index
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(&(variable.data.len() as u32).to_le_bytes());
    out.extend_from_slice(&guid_bytes(&variable.guid));
    out.extend_from_slice(&name);
    out.extend_from_slice(&variable.data);
    out.resize(align4(out.len()), 0xff);
    out
}

/// Sets `variables` in the store: older copies of each (same name and
/// GUID) are marked deleted, as the firmware itself does, and the new
/// records go into the free space.
pub fn set(file: &mut [u8], variables: &[Variable]) -> Result<(), Edk2Error> {
    let (records, free_at) = records(file)?;
    let end = bounds(file)?.end;
    let new: Vec<u8> = variables.iter().flat_map(encode).collect();
    if free_at + new.len() > end
        || file[free_at..free_at + new.len()]
            .iter()
            .any(|&b| b != 0xff)
    {
        return Err(Edk2Error::Full {
            free: end - free_at,
            needed: new.len(),
        });
    }
    for record in records.iter().filter(|r| is_live(r.state)) {
        let replaced = variables
            .iter()
            .any(|v| v.name == record.variable.name && v.guid == record.variable.guid);
        if replaced {
            file[record.offset + 2] &= VAR_DELETED;
        }
    }
    file[free_at..free_at + new.len()].copy_from_slice(&new);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secureboot::efi::{GLOBAL_VARIABLE, IMAGE_SECURITY_DATABASE};

    /// An empty store as OVMF's build lays it out (72-byte volume header).
    fn empty_store(size: usize) -> Vec<u8> {
        let mut file = vec![0u8; 72];
        file[40..44].copy_from_slice(b"_FVH");
        file[48..50].copy_from_slice(&72u16.to_le_bytes());
        file.extend_from_slice(&guid_bytes(&AUTHENTICATED_STORE));
        file.extend_from_slice(&(size as u32).to_le_bytes());
        file.extend_from_slice(&[0x5a, 0xfe, 0, 0, 0, 0, 0, 0]);
        file.resize(72 + size, 0xff);
        file
    }

    fn var(name: &str, guid: Uuid, data: &[u8]) -> Variable {
        Variable::secure_boot(name, guid, [7; 16], data.to_vec())
    }

    #[test]
    fn set_then_read_gives_the_variables_back() {
        let mut file = empty_store(4096);
        let vars = vec![
            var("PK", GLOBAL_VARIABLE, b"pk-data"),
            var("db", IMAGE_SECURITY_DATABASE, b"d"),
        ];
        set(&mut file, &vars).unwrap();
        assert_eq!(read(&file).unwrap(), vars);
        // The first record starts on the 4-byte boundary after the headers.
        assert_eq!(&file[100..104], &[0xaa, 0x55, VAR_ADDED, 0]);
    }

    #[test]
    fn a_replaced_variable_is_marked_deleted() {
        let mut file = empty_store(4096);
        set(&mut file, &[var("db", IMAGE_SECURITY_DATABASE, b"old")]).unwrap();
        set(&mut file, &[var("db", IMAGE_SECURITY_DATABASE, b"new")]).unwrap();
        let live = read(&file).unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].data, b"new");
        assert_eq!(file[102], VAR_ADDED & VAR_DELETED);
        assert_eq!(records(&file).unwrap().0.len(), 2);
    }

    #[test]
    fn a_full_store_and_other_files_are_refused() {
        let mut file = empty_store(128);
        let big = var("db", IMAGE_SECURITY_DATABASE, &[1; 200]);
        assert!(matches!(
            set(&mut file, &[big]),
            Err(Edk2Error::Full { .. })
        ));
        assert!(matches!(read(&[0u8; 200]), Err(Edk2Error::NotAStore(_))));
        assert!(!looks_like_store(b"AMZNUEFI"));
    }
}
