//! `imgforge build`: the command line only. The flags are checked and
//! turned into the engine's typed [`BuildOptions`] here (bad input exits
//! 2 before any work); the build is [`imgforge::build`], the plan
//! [`imgforge::build::plan`].

use std::path::PathBuf;

use imgforge::build::plan::Plan;
use imgforge::build::{self, BuildOptions, BuildRequest};
use imgforge::image::layout;
use imgforge::sys::workdir::default_cache_dir;
use imgforge::units::ByteSize;
use imgforge::{platform, sizeclass};

use super::BadInput;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  imgforge build\n  \
imgforge build --distro debian --release bookworm --size-class large --size 8G -o trading.raw\n  \
imgforge build --distro arch --size-class large --mirror 'https://mirror.example/archlinux/$repo/os/$arch'\n  \
imgforge build --arch arm64 --size-class medium -o graviton.raw\n  \
imgforge build --secure-boot -o signed.raw\n  \
imgforge build --tuning base -o plain.raw\n  \
imgforge build --packages htop,tcpdump --layer ./my-layer -o image.raw\n  \
imgforge build --packages htop --layout-from base.raw -o htop.raw\n  \
imgforge build --repository 'deb [signed-by=ci.asc] https://apt.example/ci stable main' --packages ci-runner")]
pub struct BuildArgs {
    /// Distribution to bootstrap: debian or arch (one data file each in
    /// rootfs/distros/). Arch is tested offline only, against a fixture
    /// repository of makepkg'd packages (pacman with signatures required,
    /// the keyring refresh, hooks, the initramfs check, and an Arch-layout
    /// image of Debian's kernel, GRUB and userland repackaged for pacman,
    /// booted under BIOS and UEFI). What is proven only on a real mirror:
    /// Arch's real packages, kernel and mkinitcpio, and a real Arch image
    /// booting (see README, Arch Linux, and --plan).
    #[arg(long, default_value = "debian")]
    pub distro: String,

    /// CPU architecture of the image: x86_64 (default) or arm64 (Graviton:
    /// UEFI only). A foreign architecture is bootstrapped through
    /// qemu-user-static and binfmt_misc (registered only while the build
    /// runs, if it was not already). Rows in boot/architectures.toml.
    #[arg(
        long,
        alias = "architecture",
        default_value = "x86_64",
        value_name = "ARCH"
    )]
    pub arch: String,

    /// Distribution release (default: the distro's own, bookworm for debian,
    /// rolling for arch).
    #[arg(long)]
    pub release: Option<String>,

    /// Kernel flavour, from the distro's `kernels` table: debian cloud
    /// (default) or generic; arch linux (default) or lts.
    #[arg(long)]
    pub kernel: Option<String>,

    /// Instance size class the image is tuned for: small (4-8 vCPUs),
    /// medium (16-32), large (48-96), xlarge (128-192). Decides the CPU
    /// isolation on the kernel command line.
    #[arg(long, default_value = "small")]
    pub size_class: String,

    /// What the image is for (the tuning profile), from
    /// rootfs/profiles.toml: trading (default: low-latency tuning for the
    /// size class), trading-irqbalance, base (untuned). A profile is a list
    /// of layers, packages, kernel command line tokens and kernel config
    /// fragments.
    #[arg(long, value_name = "NAME")]
    pub tuning: Option<String>,

    /// The old name of --tuning, for one release (--profile will be the
    /// AWS profile everywhere).
    #[arg(long = "profile", hide = true, value_name = "NAME")]
    pub old_profile: Option<String>,

    /// Disk image size, e.g. 4G, 8GiB, 2048M (default: the root filesystem
    /// plus headroom, rounded up to whole GiB, at least 2G).
    #[arg(long, value_parser = size_arg)]
    pub size: Option<ByteSize>,

    /// Package mirror. Debian: a mirror URL (default: the host's apt
    /// sources, moved to --release). Arch: a URL with `$repo` and `$arch`
    /// placeholders, e.g. https://mirror.example/archlinux/$repo/os/$arch
    /// (default: Arch's geo mirror).
    #[arg(long)]
    pub mirror: Option<String>,

    /// Debian: the security archive for --mirror's -security source
    /// (default http://deb.debian.org/debian-security). --mirror URL gives
    /// the image URL's release and -updates, and this -security.
    #[arg(long, value_name = "URL")]
    pub security_mirror: Option<String>,

    /// An extra package source, with its key (repeatable; part of the cache
    /// key, with the key's bytes). Debian: 'deb [signed-by=KEYFILE] URL
    /// SUITE COMPONENT...': KEYFILE (armored .asc or binary .gpg) is read
    /// from this machine and installed into the image's /etc/apt/keyrings;
    /// --packages may name its packages. An unsigned repository
    /// (no signed-by, or trusted=yes) or a missing key file is refused.
    /// Arch: 'NAME Server=URL Key=KEYFILE [SigLevel=Required,...]': a
    /// [NAME] section in the image's pacman.conf (Server repeatable, $repo
    /// and $arch expanded; SigLevel words joined by commas, default
    /// Required,DatabaseOptional, package signatures always required);
    /// KEYFILE is added to the build's keyring and locally signed, and
    /// shipped as /usr/share/pacman/keyrings/imgforge-NAME.gpg, which the
    /// image's first boot populates. A bare 'multilib' adds Arch's own
    /// multilib from the build's mirror.
    #[arg(long = "repository", value_name = "LINE")]
    pub repositories: Vec<String>,

    /// A local package to install (repeatable; Debian: a .deb, Arch: a
    /// .pkg.tar.zst, installed with pacman -U), its dependencies resolved
    /// from the sources. Part of the cache key by its exact bytes.
    #[arg(long = "package-file", value_name = "FILE")]
    pub package_files: Vec<PathBuf>,

    /// A kernel command line argument appended after the size class's
    /// (repeatable), e.g. --kernel-arg mitigations=off --kernel-arg
    /// hugepages=512. Recorded in the manifest with the whole command line.
    #[arg(long = "kernel-arg", value_name = "ARG")]
    pub kernel_args: Vec<String>,

    /// A script run as root inside the image's tree after its packages and
    /// layers (repeatable, in order). It gets /proc, /sys, /dev and /run,
    /// the network (the host's name servers), apt (lists fresh) or pacman
    /// (keyring and synced databases, the build's mirror), no service
    /// started (policy-rc.d), `uname -r` reporting the image's kernel, and
    /// IMGFORGE_DISTRO, IMGFORGE_RELEASE, IMGFORGE_ARCH, IMGFORGE_SIZE_CLASS,
    /// IMGFORGE_KERNEL_VERSION. `sysctl -w`/`-p`, `modprobe` and `systemctl
    /// start` do nothing there: the build host's kernel and services never
    /// change (/proc/sys is read-only). A failing script fails the build.
    #[arg(long = "script", value_name = "FILE")]
    pub scripts: Vec<PathBuf>,

    /// An Ansible playbook run against the image's tree (before the
    /// --scripts) by the host's ansible-playbook (Debian package `ansible`)
    /// through Ansible's chroot connection: roles and files beside it work,
    /// facts are the image's, Python is installed into the image for it,
    /// and imgforge_distro, imgforge_release, imgforge_architecture,
    /// imgforge_size_class, imgforge_kernel_version are set. As for
    /// --script, sysctl reloads and service starts leave the build host
    /// alone; the settings stay in the image's files.
    #[arg(long, value_name = "PLAYBOOK")]
    pub ansible: Option<PathBuf>,

    /// A variable for --ansible's playbook, KEY=VALUE (repeatable).
    #[arg(long = "ansible-var", value_name = "KEY=VALUE", value_parser = ansible_var)]
    pub ansible_vars: Vec<(String, String)>,

    /// A newer keyring to verify packages with (Arch: a folder holding
    /// archlinux.gpg, archlinux-trusted and archlinux-revoked), instead of
    /// the host's archlinux-keyring refreshed from the mirror.
    #[arg(long, value_name = "DIR")]
    pub keyring: Option<PathBuf>,

    /// Cache for bootstrapped trees and downloaded packages.
    #[arg(long, env = "IMGFORGE_CACHE_DIR", default_value_os_t = default_cache_dir())]
    pub cache_dir: PathBuf,

    /// Bootstrap again even when a cached tree for this package set exists.
    #[arg(long)]
    pub refresh_cache: bool,

    /// Write the installed package set with exact versions (and the
    /// architecture, sources, mirror state and newest package date) to
    /// FILE, as TOML, when the build succeeds. Read it back with --locked.
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,

    /// Install exactly the versions in FILE (written by --lock), the
    /// dependencies included; fails naming each version the mirror no
    /// longer has. The cached tree is keyed by FILE's versions, so a cache
    /// hit reads no mirror (an offline rebuild). Without --locked the build
    /// reads the mirror's state (its Release files or repository databases)
    /// and keys the cache by it, so an update is never missed.
    #[arg(long, value_name = "FILE")]
    pub locked: Option<PathBuf>,

    /// Extra packages to install, comma-separated (part of the cache key).
    #[arg(long, value_delimiter = ',')]
    pub packages: Vec<String>,

    /// Extra layer folder copied into the image after the built-in ones
    /// (repeatable; a `layer.toml` in it may list units to enable).
    #[arg(long = "layer")]
    pub layers: Vec<PathBuf>,

    /// Where to write the raw image; `IMAGE.json` gets the manifest.
    #[arg(short, long, default_value = "image.raw")]
    pub output: PathBuf,

    /// What the disk's ids (disk and partition GUIDs, filesystem UUID, ext4
    /// hash seed, FAT volume id) are derived from; the same seed gives the
    /// same ids. Default: the output's file name without folder and `.raw`
    /// (`-o out/web.raw` gives `web`). Give each image you boot side by side
    /// its own seed: two disks with one seed share their UUIDs.
    #[arg(long)]
    pub seed: Option<String>,

    /// Lay the root filesystem out on top of PARENT's (an image imgforge
    /// built, with its manifest's seed) instead of anew: files that did not
    /// change keep their blocks, so a delta upload against PARENT's snapshot
    /// (`imgforge upload --parent`) sends only what changed (adding a
    /// package moves a few percent of the blocks instead of nearly all).
    /// The image keeps PARENT's disk size and ids, and depends on PARENT's
    /// bytes as well as on its inputs (its manifest records their digest).
    #[arg(long, value_name = "PARENT.raw")]
    pub layout_from: Option<PathBuf>,

    /// SOURCE_DATE_EPOCH (seconds since 1970) that every timestamp in the
    /// image is clamped to. Default: the SOURCE_DATE_EPOCH environment
    /// variable, else when the newest installed package was built (Debian:
    /// the newest file dpkg installed under /usr; Arch: the newest
    /// %BUILDDATE%).
    #[arg(long, value_name = "SECONDS")]
    pub epoch: Option<u64>,

    /// How an instance sets itself up at first boot: `imgforge` (lean units:
    /// root volume growth, launch key, hostname, #! user-data once per
    /// instance; no cloud-init) or `cloud-init` (EC2 datasource only, IMDSv2;
    /// for cloud-config user-data). See rootfs/first-boot.toml.
    #[arg(long, value_name = "MODE")]
    pub first_boot: Option<String>,

    /// UEFI Secure Boot: install the distribution's signed shim and GRUB
    /// (Debian: shim-signed, grub-efi-amd64-signed / grub-efi-arm64-signed)
    /// and lay out the ESP's removable-media path as shim (EFI/BOOT/BOOTX64.EFI)
    /// -> the signed GRUB beside it -> the distribution's signed kernel, with
    /// EFI/debian/grub.cfg (the signed GRUB's built-in prefix) pointing at
    /// /boot/grub/grub.cfg. The BIOS path is unchanged. Refused (exit 2) for a
    /// distro without a signed chain (Arch).
    #[arg(long)]
    pub secure_boot: bool,

    /// Install what is needed to use the TPM from the instance (NitroTPM on
    /// EC2): the distro's `tpm_packages` (Debian and Arch: tpm2-tools and
    /// the TSS libraries it pulls in). Without it the image carries none.
    #[arg(long)]
    pub tpm_tools: bool,

    /// With --secure-boot: your own module-signing private key (PEM). Kernel
    /// modules the distribution did not sign (those DKMS builds into
    /// /lib/modules/VERSION/updates, e.g. GPU drivers installed with
    /// --packages) are signed with it, so they load under Secure Boot; the
    /// certificate goes into db of the UEFI variables boot-test and upload
    /// use. A kernel of your own that came unsigned is signed with it too
    /// (sbsign). The key never enters the image. Needs --secure-boot-cert.
    #[arg(long, value_name = "KEY", requires = "secure_boot_cert")]
    pub secure_boot_key: Option<PathBuf>,

    /// The X.509 certificate (PEM or DER) of --secure-boot-key. Make a pair
    /// with `openssl req -new -x509 -newkey rsa:2048 -nodes -days 3650 -subj
    /// "/CN=my modules" -keyout KEY -out CERT`.
    #[arg(long, value_name = "CERT", requires = "secure_boot_key")]
    pub secure_boot_cert: Option<PathBuf>,

    /// Print what the build would use (distro, sources, packages, layers,
    /// size class, kernel command line, partitions, cache key) and stop:
    /// no bootstrap, no root, no network.
    #[arg(long)]
    pub plan: bool,

    /// Print the build summary (or, with --plan, the plan) as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Read layers, tables and templates from this folder (with rootfs/,
    /// boot/ and kernel-configs/) instead of the copy built into imgforge.
    #[arg(long, env = "IMGFORGE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// `--size`: the one size notation.
fn size_arg(text: &str) -> Result<ByteSize, String> {
    text.parse()
        .map_err(|e| format!("cannot understand size `{text}`: {e}"))
}

/// `--ansible-var KEY=VALUE`: KEY an Ansible variable name.
fn ansible_var(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    let valid = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`{key}` is not an Ansible variable name (letters, digits and _, not starting with a digit)"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

/// One `--kernel-arg`: a single token grub.cfg can carry as written.
fn check_kernel_arg(arg: &str) -> Result<(), BadInput> {
    let bad = arg.is_empty()
        || arg
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"'`$;\\{}#".contains(c));
    if bad {
        return Err(BadInput::new(format!(
            "--kernel-arg {arg:?} is not one kernel argument: give one NAME or NAME=VALUE per \
             --kernel-arg, without spaces, quotes, `$`, `;`, `#`, braces or backslashes"
        )));
    }
    Ok(())
}

/// `--tuning`, or its old name `--profile` with a warning.
pub fn tuning_flag(tuning: &Option<String>, old: &Option<String>) -> Option<String> {
    if old.is_some() {
        eprintln!(
            "imgforge: warning: --profile is the old name of --tuning (the tuning profile); \
             use --tuning: --profile will mean the AWS profile"
        );
    }
    tuning.clone().or_else(|| old.clone())
}

impl BuildArgs {
    /// The flags as the engine's typed options; what cannot be right is
    /// refused here, before any work.
    pub fn options(&self) -> Result<BuildOptions, BadInput> {
        super::warn_renamed_flag("--architecture", "--arch");
        let architecture = platform::lookup(&self.arch).map_err(BadInput::from_error)?;
        let size_class = sizeclass::lookup(&self.size_class).map_err(BadInput::from_error)?;
        if let Some(size) = self.size {
            let minimum = ByteSize(layout::minimum_disk_bytes(architecture));
            if size < minimum {
                return Err(BadInput::new(format!(
                    "--size {size} is too small: an {} image needs at least {minimum} (its \
                     partitions and the smallest root filesystem), and more for its files; pass \
                     --size 2G or more, or leave --size out to fit the image to its tree",
                    architecture.name
                )));
            }
        }
        for arg in &self.kernel_args {
            check_kernel_arg(arg)?;
        }
        Ok(BuildOptions {
            distro: self.distro.clone(),
            architecture,
            release: self.release.clone(),
            kernel: self.kernel.clone(),
            size_class,
            tuning: tuning_flag(&self.tuning, &self.old_profile),
            size: self.size,
            mirror: self.mirror.clone(),
            security_mirror: self.security_mirror.clone(),
            repositories: self.repositories.clone(),
            package_files: self.package_files.clone(),
            kernel_args: self.kernel_args.clone(),
            scripts: self.scripts.clone(),
            ansible: self.ansible.clone(),
            ansible_vars: self.ansible_vars.clone(),
            keyring: self.keyring.clone(),
            cache_dir: self.cache_dir.clone(),
            refresh_cache: self.refresh_cache,
            lock: self.lock.clone(),
            locked: self.locked.clone(),
            packages: self.packages.clone(),
            layers: self.layers.clone(),
            output: self.output.clone(),
            seed: self.seed.clone(),
            layout_from: self.layout_from.clone(),
            epoch: self.epoch,
            first_boot: self.first_boot.clone(),
            data_dir: self.data_dir.clone(),
            show_progress: !self.json,
            secure_boot: self.secure_boot,
            tpm_tools: self.tpm_tools,
            module_signing_key: self
                .secure_boot_key
                .clone()
                .zip(self.secure_boot_cert.clone()),
        })
    }
}

pub fn run(args: &BuildArgs) -> anyhow::Result<()> {
    let options = args.options()?;
    // Resolving reads only the flags and the data files: what it refuses
    // (an unknown distro, profile or first-boot mode, a missing layer, a
    // lock file that does not fit) is bad input.
    let request = BuildRequest::resolve(&options).map_err(BadInput::from_error)?;
    if args.plan {
        let plan = Plan::of(&request)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&plan).expect("plan serializes")
            );
        } else {
            plan.print_text();
        }
        return Ok(());
    }
    let summary = build::build(request, &options).map_err(|err| -> anyhow::Error {
        if err.is_bad_input() {
            BadInput::from_error(err).into()
        } else {
            err.into()
        }
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serializes")
        );
    } else {
        eprintln!(
            "built {} ({:.1} GiB, sha256 {}) in {:.1}s",
            summary.image.display(),
            summary.size_bytes as f64 / (1u64 << 30) as f64,
            &summary.sha256[..16],
            summary.seconds
        );
    }
    Ok(())
}
