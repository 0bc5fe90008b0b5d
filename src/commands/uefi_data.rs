//! `upload --uefi-data auto|none|FILE`: the UefiData RegisterImage gets.
//! `auto` (the default) ships the Secure Boot variables of an image built
//! with `--secure-boot` (the same set `boot-test --secure-boot` boots
//! with) and nothing for any other image; FILE is an AWS blob or an edk2
//! variable store. With UefiData the AMI boots `uefi` unless --boot-mode
//! says otherwise: uefi-preferred would boot BIOS, without Secure Boot, on
//! an instance type without UEFI.

use std::path::{Path, PathBuf};

use imgforge::aws::ami::register::BootMode;
use imgforge::aws::request::UploadRequest;
use imgforge::image::inspect;
use imgforge::platform;
use imgforge::secureboot::{self, aws_blob, keys::OwnerKeys};

use super::{BadInput, secure_boot_keys};

/// What `--uefi-data` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UefiDataArg {
    Auto,
    None,
    File(PathBuf),
}

pub fn parse(text: &str) -> Result<UefiDataArg, String> {
    match text {
        "auto" => Ok(UefiDataArg::Auto),
        "none" => Ok(UefiDataArg::None),
        path if Path::new(path).is_file() => Ok(UefiDataArg::File(path.into())),
        path => Err(format!(
            "{path} is not a file; give auto, none, or an AWS UefiData blob or edk2 variable \
             store file"
        )),
    }
}

/// Upload's UefiData flags.
#[derive(Debug, clap::Args)]
pub struct UefiDataArgs {
    /// UEFI variables the AMI starts with (RegisterImage's UefiData): `auto`
    /// ships, for an image built with --secure-boot, its Secure Boot variables
    /// (PK and KEK of the owner's, see --secure-boot-keys; Microsoft's KEK CA
    /// and UEFI CA 2011 and the dbx from the distribution's enrolled OVMF store;
    /// no boot entries), the same set `boot-test --secure-boot` boots with, and
    /// nothing for other images; `none` ships nothing (the instance starts in
    /// setup mode, Secure Boot not enforced); FILE is an AWS UefiData blob
    /// (python-uefivars' format, base64) or an edk2 variable store (its PK, KEK,
    /// db and dbx are converted). With UefiData the boot mode is uefi unless
    /// --boot-mode says otherwise. Packer: uefi_data.
    #[arg(long, value_name = "auto|none|FILE", default_value = "auto", value_parser = parse)]
    pub uefi_data: UefiDataArg,
    #[arg(long, value_name = "DIR", value_parser = secure_boot_keys::parse_dir,
          help = format!("{}. Packer: none", secure_boot_keys::HELP))]
    pub secure_boot_keys: Option<PathBuf>,
}

impl UefiDataArgs {
    /// Sets `request.uefi_data` (and the boot mode it needs); `family` and
    /// `name` are upload's --family and --name (the generated keys' family).
    pub fn apply(
        &self,
        family: Option<&str>,
        name: Option<&str>,
        request: &mut UploadRequest,
    ) -> anyhow::Result<()> {
        let keys = KeyChoice {
            dir: self.secure_boot_keys.as_deref(),
            family,
            name,
        };
        resolve(&self.uefi_data, keys, request)
    }
}

/// Where the owner's keys come from, for `auto`.
struct KeyChoice<'a> {
    dir: Option<&'a Path>,
    family: Option<&'a str>,
    name: Option<&'a str>,
}

/// Sets `request.uefi_data` (and the boot mode it needs) from the flag.
fn resolve(arg: &UefiDataArg, keys: KeyChoice, request: &mut UploadRequest) -> anyhow::Result<()> {
    if request.no_register {
        if let UefiDataArg::File(path) = arg {
            Err(BadInput::new(format!(
                "--uefi-data {}: UefiData is registered with the AMI, and --no-register \
                 registers none; leave one out",
                path.display()
            )))?;
        }
        return Ok(());
    }
    let blob = match arg {
        UefiDataArg::None => None,
        UefiDataArg::File(path) => Some(
            secureboot::uefi_data_from_file(path)
                .map_err(|e| BadInput::new(format!("--uefi-data: {e}")))?,
        ),
        UefiDataArg::Auto => auto(&request.image, keys)?,
    };
    let Some(blob) = blob else {
        return Ok(());
    };
    match request.boot_mode {
        Some(BootMode::LegacyBios) => Err(BadInput::new(
            "--uefi-data: UefiData is for UEFI; --boot-mode legacy-bios has no Secure Boot \
             (pass --boot-mode uefi, or --uefi-data none)",
        ))?,
        Some(_) => {}
        None => request.boot_mode = Some(BootMode::Uefi),
    }
    eprintln!(
        "imgforge: UefiData: {} base64 characters (at most {})",
        blob.len(),
        aws_blob::MAX_CHARS
    );
    request.uefi_data = Some(blob);
    Ok(())
}

/// The shipped set for an image built with `--secure-boot`; None for any
/// other image (it boots without Secure Boot, as before).
fn auto(image: &Path, keys: KeyChoice) -> anyhow::Result<Option<String>> {
    let Ok(info) = inspect::read_image(image) else {
        return Ok(None);
    };
    let Some(manifest) = info.manifest.filter(|m| m.secure_boot.is_some()) else {
        return Ok(None);
    };
    let arch = platform::lookup(&manifest.architecture).map_err(BadInput::from_error)?;
    let store = secureboot::enrolled_store(arch)?;
    let owner: OwnerKeys = match keys.dir {
        Some(dir) => secure_boot_keys::load(dir)?,
        None => {
            let family = secure_boot_keys::family(keys.family, keys.name, image);
            secure_boot_keys::generated(&family)?
        }
    };
    let owner_db = secureboot::owner_db_certs(Some(&manifest));
    let shipped = secureboot::shipped(owner, &store, manifest.build_time, owner_db)?;
    for line in shipped.describe() {
        eprintln!("imgforge: UefiData: {line}");
    }
    Ok(Some(aws_blob::encode(&shipped.variables)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_takes_auto_none_or_an_existing_file() {
        assert_eq!(parse("auto"), Ok(UefiDataArg::Auto));
        assert_eq!(parse("none"), Ok(UefiDataArg::None));
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap();
        assert_eq!(parse(path), Ok(UefiDataArg::File(file.path().into())));
        let missing = parse("/nonexistent/vars.fd").unwrap_err();
        assert!(missing.contains("not a file"), "{missing}");
    }

    #[test]
    fn a_templated_name_does_not_name_the_key_family() {
        let image = Path::new("/images/web-small.raw");
        assert_eq!(secure_boot_keys::family(None, Some("web-v3"), image), "web");
        assert_eq!(
            secure_boot_keys::family(None, Some("web-{date}"), image),
            "web-small"
        );
        assert_eq!(
            secure_boot_keys::family(Some("fleet"), None, image),
            "fleet"
        );
    }
}
