//! The Arch module's one error enum: each failure says what to do.

use std::path::PathBuf;

use crate::sys::api_mounts::ApiMountError;
use crate::sys::fsio::PathError;
use crate::sys::interrupt::Interrupted;
use crate::sys::tool::ToolError;

#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error(
        "--mirror {0} lacks the `$repo` placeholder: pass a URL like https://mirror.example/archlinux/$repo/os/$arch"
    )]
    MirrorWithoutRepo(String),
    #[error(
        "the Arch mirror {mirror} cannot be reached: {reason}; check the URL and the network, \
         or pass another --mirror (a URL with $repo and $arch, e.g. https://geo.mirror.pkgbuild.com/$repo/os/$arch)"
    )]
    MirrorUnreachable { mirror: String, reason: String },
    #[error(
        "pacman could not read the repositories from the Arch mirror {mirror}:\n{detail}\n\
         check that the URL names a mirror's `$repo/os/$arch` folder, or pass another --mirror"
    )]
    Mirror { mirror: String, detail: String },
    #[error(
        "a package is not in the repositories of {mirror}: {detail}; check --packages and --kernel, \
         or whether the mirror is complete"
    )]
    NotFound { detail: String, mirror: String },
    #[error(
        "pacman refused {package}: its signature could not be verified with the build's keyring:\n{detail}\n\
         If the key is newer than the keyring, pass --keyring DIR with a current Arch keyring (archlinux.gpg, \
         archlinux-trusted and archlinux-revoked, from usr/share/pacman/keyrings/ of a current \
         archlinux-keyring package) or update the host's archlinux-keyring package; if the keyring is current, \
         the file is corrupt or tampered with: try another --mirror (the bad download was deleted from the cache)"
    )]
    Signature { package: String, detail: String },
    #[error(
        "{package} has no signature on its server ({detail}); pacman installs only signed \
         packages here (SigLevel Required): sign it (makepkg --sign, or gpg --detach-sign) and put \
         FILE.sig beside it"
    )]
    MissingSignature { package: String, detail: String },
    #[error(
        "{what}: {dir} has no archlinux.gpg (a keyring folder holds archlinux.gpg, archlinux-trusted \
         and archlinux-revoked, as usr/share/pacman/keyrings/ of an archlinux-keyring package does)"
    )]
    KeyringFiles { dir: PathBuf, what: String },
    #[error(
        "the keyring package {package} from the mirror is refused: {detail}. The build's keyring \
         is not refreshed with it; pass --keyring DIR with a current Arch keyring \
         (usr/share/pacman/keyrings/ of an archlinux-keyring package you trust), or try another --mirror"
    )]
    KeyringPackage { package: String, detail: String },
    #[error(
        "the mirror's {url} changed between reading the mirror's state (the cached tree's key) \
         and pacman -Sy: the mirror was updated during the build. Run the build again"
    )]
    MirrorMoved { url: String },
    #[error("pacman downloaded {package}, but its file is not in {cache}")]
    Downloaded { package: String, cache: PathBuf },
    #[error("--repository '{spec}': {why}")]
    Repository { spec: String, why: String },
    #[error(
        "{source}\nA --repository's packages must be signed by its Key= file's key \
         ({repositories}): sign them (makepkg --sign, or gpg --detach-sign) and run repo-add again"
    )]
    RepositorySignature {
        repositories: String,
        #[source]
        source: Box<ArchError>,
    },
    #[error(transparent)]
    ApiMounts(#[from] ApiMountError),
    #[error(
        "cannot read the state of the Arch mirror at {url}: {detail}\n\
         imgforge keys its cached tree by the mirror's repository databases, so that an update is \
         never missed by a stale cache. Check the network and --mirror; to build without the \
         mirror, pass --locked FILE (a lock file written by an earlier `imgforge build --lock \
         FILE`) whose tree is in the cache"
    )]
    MirrorStateUnreachable { url: String, detail: String },
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Initrd(#[from] crate::distro::initrd::InitrdError),
    #[error(
        "the bootstrapped tree has no kernel (expected exactly one /boot/vmlinuz-*, found {found})"
    )]
    Kernel { found: usize },
    #[error(
        "pacman installed the kernel {installed} but none is in /boot: the initramfs hook \
         (mkinitcpio's, which copies the kernel to /boot/vmlinuz-PKGBASE and then builds the \
         initramfs) failed, and pacman still exited 0. pacman printed:\n{output}\n\
         Fix what the hook names (the mkinitcpio drop-in of the distro's bootstrap files, a \
         missing module) and build again; the tree was not cached"
    )]
    KernelNotInBoot { installed: String, output: String },
    #[error(
        "cannot find the kernel configuration inside {0} (IKCONFIG): the kernel was built without \
         CONFIG_IKCONFIG, or compressed in a format imgforge does not read (gzip, zstd and xz are read)"
    )]
    NoIkconfig(String),
}
