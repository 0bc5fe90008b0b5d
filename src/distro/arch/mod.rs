//! Arch Linux from a Debian host: the host's pacman (Debian's
//! pacman-package-manager) with imgforge's own pacman.conf, a private
//! keyring, the package cache under imgforge's cache, and mkinitcpio set up
//! by a drop-in before the kernel is installed.

mod desc;
mod error;
pub mod ikconfig;
mod kernel_install;
pub mod keyring;
pub mod keyring_package;
pub mod pacman;
pub mod pacman_conf;
pub mod repositories;
mod steps;

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::mirror::{self, CURL};
use super::{
    BootstrapJob, Distro, DistroData, DistroError, Kernel, MirrorDigest, SourceOptions, Sources,
};
use crate::data::DataDir;
use crate::image::manifest::Package;
use crate::sys::api_mounts::ApiMounts;
use crate::sys::fsio::at;
use crate::sys::interrupt;
use crate::sys::tool::{HostTool, Tool, ToolError};
pub use desc::{desc_build_date, parse_desc};
pub use error::ArchError;
pub use ikconfig::extract_ikconfig;
use keyring::Keyring;
use pacman::Pacman;
pub use pacman::{SigLevel, render_pacman_conf};

/// `[bootstrap]` in rootfs/distros/arch.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub default_mirror: String,
    pub repositories: Vec<String>,
    pub first_package: String,
    pub keyring_package: String,
    /// Every repository name that is Arch's own (a host's other sections
    /// are third-party).
    pub official_repositories: Vec<String>,
    /// The first-boot unit that populates the instance's keyring.
    pub keyring_unit: String,
    /// Always `Required` from the data file; [`Arch::with_sig_level`] lets
    /// imgforge's tests use unsigned test repositories.
    #[serde(skip)]
    pub sig_level: SigLevel,
    /// The keyring the build starts from when no --keyring is given: the
    /// host's (/usr/share/keyrings) unless [`Arch::with_starting_keyring`]
    /// names another (tests: a keyring with an expired packager key).
    #[serde(skip)]
    pub starting_keyring: Option<PathBuf>,
}

pub struct Arch {
    data: DistroData,
    settings: Settings,
    /// `MODULES=`/`HOOKS=` lines of the mkinitcpio drop-ins in the
    /// bootstrap files, for `--plan`.
    mkinitcpio: Vec<String>,
}

impl Arch {
    pub fn boxed(data: DistroData, dir: &DataDir) -> Result<Box<dyn Distro>, DistroError> {
        Ok(Box::new(Self::new(data, dir)?))
    }

    pub fn new(data: DistroData, dir: &DataDir) -> Result<Self, DistroError> {
        let settings = super::bootstrap_settings(&data)?;
        let mut mkinitcpio = Vec::new();
        if let Some(files) = &data.bootstrap_files {
            let dropins = dir
                .path()
                .join("rootfs")
                .join(files)
                .join("etc/mkinitcpio.conf.d");
            let mut paths: Vec<PathBuf> = fs::read_dir(&dropins)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            paths.sort();
            for path in paths {
                let text = fs::read_to_string(&path).map_err(at("read", &path))?;
                mkinitcpio.extend(mkinitcpio_settings(&text));
            }
        }
        Ok(Self {
            data,
            settings,
            mkinitcpio,
        })
    }

    /// The same distro verifying packages at `level` (tests only: the
    /// command line always gets `Required`).
    pub fn with_sig_level(mut self, level: SigLevel) -> Self {
        self.settings.sig_level = level;
        self
    }

    /// The same distro starting, without --keyring, from the keyring
    /// folder `dir` instead of the host's (tests only).
    pub fn with_starting_keyring(mut self, dir: &Path) -> Self {
        self.settings.starting_keyring = Some(dir.to_path_buf());
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The bootstrap's pacman.conf: Arch's repositories on the build's
    /// servers, then the `--repository` sections.
    fn pacman_conf(&self, sources: &Sources) -> String {
        render_pacman_conf(
            &self.data.architecture,
            self.settings.sig_level,
            &self.settings.repositories,
            &sources.lines,
        ) + &repositories::bootstrap_sections(sources)
    }

    fn rules(&self) -> repositories::Rules<'_> {
        repositories::Rules {
            repositories: &self.settings.repositories,
            official: &self.settings.official_repositories,
        }
    }

    /// See [`repositories::image_sources`].
    fn image_sources(&self, mirror: Option<&str>, host_conf: &Path) -> Result<Sources, ArchError> {
        repositories::image_sources(
            mirror,
            host_conf,
            &self.settings.default_mirror,
            &self.rules(),
        )
    }
}

/// The `MODULES=(...)` and `HOOKS=(...)` lines of a mkinitcpio config.
pub fn mkinitcpio_settings(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("MODULES=") || l.starts_with("HOOKS="))
        .map(String::from)
        .collect()
}

/// The words of a mkinitcpio array setting, `NAME=(a b c)`.
pub fn mkinitcpio_array(lines: &[String], name: &str) -> Option<Vec<String>> {
    let prefix = format!("{name}=(");
    lines.iter().rev().find_map(|l| {
        let inner = l.strip_prefix(&prefix)?.split(')').next()?;
        Some(inner.split_whitespace().map(String::from).collect())
    })
}

/// What `--plan` says of how far the Arch path is proven (README, Arch Linux).
pub const TESTED: &str = "offline only, against a fixture repository of small makepkg'd packages: \
     pacman with SigLevel Required, the keyring refresh over an expired packager key, scriptlets \
     and hooks, a failed initramfs hook, the kernel check on Arch's ext4=m config lines; and an \
     Arch-layout image of Debian's kernel, systemd, GRUB, initramfs-tools and pacman repackaged \
     as signed Arch packages, built by this path and booted under BIOS and UEFI \
     (tests/arch_boot.rs: mkinitcpio's install hook, Arch's grub.cfg paths and unit names, the \
     first-boot keyring unit). Proven only on a real mirror: Arch's real packages, their \
     scriptlets and dependency closure, the real keyring, mkinitcpio itself and Arch's kernel, \
     GRUB from Arch, and a real Arch image booting (tests/arch_real.rs, IMGFORGE_ARCH_MIRROR). \
     --repository, --package-file and the scripts' keyring and databases are tested against \
     the fixture (a step's pacman -S with the host's pacman copied into the tree)";

/// Where Debian's archlinux-keyring package puts the keyring files.
const HOST_KEYRINGS: &str = "/usr/share/keyrings";

/// The shared interruption check, as this module's error (the callers
/// return the distro-level error, which wraps [`ArchError`]).
fn check_interrupt() -> Result<(), ArchError> {
    Ok(interrupt::check()?)
}

impl Distro for Arch {
    fn data(&self) -> &DistroData {
        &self.data
    }

    fn host_tools(&self) -> Vec<HostTool> {
        vec![
            HostTool::new("pacman", "pacman-package-manager"),
            HostTool::new("pacman-key", "pacman-package-manager"),
            HostTool::new("bsdtar", "libarchive-tools"),
            HostTool::new("gpg", "gpg"),
            HostTool::new("gpgconf", "gpgconf"),
            HostTool::new("unshare", "util-linux"),
            HostTool::new("mount", "mount"),
            HostTool::new("cp", "coreutils"),
            HostTool::new("tar", "tar"),
            CURL,
        ]
    }

    fn mirror_state_files(&self, _release: &str, sources: &Sources) -> Vec<String> {
        self.repository_databases(sources)
    }

    /// Each repository's database (`$repo.db`) on each server: what pacman
    /// syncs, so a new package version changes it.
    fn mirror_state(
        &self,
        _release: &str,
        sources: &Sources,
        work_dir: &Path,
    ) -> Result<Vec<MirrorDigest>, DistroError> {
        let dir = work_dir.join("mirror-state");
        fs::create_dir_all(&dir).map_err(at("create", &dir))?;
        let mut state = Vec::new();
        for url in self.repository_databases(sources) {
            let repo = url.rsplit('/').next().unwrap_or_default().to_string();
            let dest = dir.join(format!("{}-{repo}", state.len()));
            mirror::fetch(&url, &dest).map_err(|err| ArchError::MirrorStateUnreachable {
                url: url.clone(),
                detail: match &err {
                    ToolError::Failed { tail, .. } => tail.trim().to_string(),
                    other => other.to_string(),
                },
            })?;
            let bytes = mirror::read(&dest)?;
            let sha256 = mirror::sha256_hex(&bytes);
            state.push(MirrorDigest {
                url,
                packages_sha256: sha256.clone(),
                sha256,
                date: pacman::database_build_date(&bytes).map(mirror::epoch_to_iso),
            });
        }
        Ok(state)
    }

    /// The newest `%BUILDDATE%` in pacman's local database: the Arch Linux
    /// Archive's repositories of that day (or later) hold every version.
    fn newest_package_date(
        &self,
        root: &Path,
        _mirror_state: &[MirrorDigest],
    ) -> Result<Option<String>, DistroError> {
        Ok(self.source_date_epoch(root)?.map(mirror::epoch_to_iso))
    }

    /// `Server =` URLs for every repository: `--mirror`, the host's
    /// pacman.conf's Arch mirrors, or Arch's geo mirror.
    fn sources(&self, _release: &str, mirror: Option<&str>) -> Result<Sources, DistroError> {
        Ok(self.image_sources(mirror, Path::new(repositories::HOST_PACMAN_CONF))?)
    }

    /// As [`Distro::sources`], with the `--repository` sections and keys.
    fn sources_with(&self, release: &str, options: &SourceOptions) -> Result<Sources, DistroError> {
        if options.security_mirror.is_some() {
            return Err(DistroError::Unsupported {
                distro: self.data.name.clone(),
                what: "--security-mirror (Arch has no separate security archive)".into(),
            });
        }
        let mut sources = self.sources(release, options.mirror)?;
        repositories::add_repositories(&mut sources, options.repositories, &self.rules())?;
        Ok(sources)
    }

    fn package_file_suffix(&self) -> Option<&'static str> {
        Some(".pkg.tar.zst")
    }

    fn prepare_package_manager(
        &self,
        root: &Path,
        sources: &Sources,
        work_dir: &Path,
    ) -> Result<(), DistroError> {
        Ok(self.prepare_steps(root, sources, work_dir)?)
    }

    /// pacman from the host into `work_dir/tree`: the bootstrap files, a
    /// private keyring (refreshed from the mirror's keyring package unless
    /// `job.keyring` is given), `filesystem` alone, then /proc, /sys, /dev
    /// and /run mounted and every package installed; then the tree, as tar.
    fn bootstrap(&self, job: &BootstrapJob) -> Result<(), DistroError> {
        Ok(self.bootstrap_tree(job)?)
    }

    /// Read from pacman's local database (`var/lib/pacman/local/*/desc`).
    fn installed_packages(&self, root: &Path) -> Result<Vec<Package>, DistroError> {
        let local = root.join("var/lib/pacman/local");
        let mut packages = Vec::new();
        for entry in fs::read_dir(&local).map_err(at("read", &local))?.flatten() {
            let desc = entry.path().join("desc");
            let Ok(text) = fs::read_to_string(&desc) else {
                continue;
            };
            if let Some(package) = parse_desc(&text) {
                packages.push(package);
            }
        }
        packages.sort();
        Ok(packages)
    }

    /// The newest `%BUILDDATE%` in pacman's local database.
    fn source_date_epoch(&self, root: &Path) -> Result<Option<u64>, DistroError> {
        let local = root.join("var/lib/pacman/local");
        let mut newest: Option<u64> = None;
        for entry in fs::read_dir(&local).map_err(at("read", &local))?.flatten() {
            let Ok(text) = fs::read_to_string(entry.path().join("desc")) else {
                continue;
            };
            if let Some(date) = desc_build_date(&text) {
                newest = Some(newest.map_or(date, |n| n.max(date)));
            }
        }
        Ok(newest)
    }

    fn kernel(&self, root: &Path) -> Result<Kernel, DistroError> {
        let boot = root.join("boot");
        let images: Vec<_> = fs::read_dir(&boot)
            .map_err(at("read", &boot))?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
            .map(|e| e.path())
            .collect();
        let [image] = images.as_slice() else {
            return Err(ArchError::Kernel {
                found: images.len(),
            }
            .into());
        };
        let bytes = fs::read(image).map_err(at("read", image))?;
        let config = extract_ikconfig(&bytes)
            .ok_or_else(|| ArchError::NoIkconfig(image.display().to_string()))?;
        Ok(Kernel {
            version: kernel_version(root).unwrap_or_default(),
            config,
        })
    }

    /// The image's own /etc/pacman.d/mirrorlist: the build's mirror, so that
    /// `pacman -Syu` works on the instance.
    fn configure(&self, root: &Path, sources: &Sources) -> Result<(), DistroError> {
        let dir = root.join("etc/pacman.d");
        fs::create_dir_all(&dir).map_err(at("create", &dir))?;
        let path = dir.join("mirrorlist");
        fs::write(&path, render_mirrorlist(sources)).map_err(at("write", &path))?;
        repositories::configure_image(root, sources, &self.settings.keyring_unit)?;
        Ok(())
    }

    fn plan_notes(&self) -> Vec<(String, String)> {
        let mut notes = vec![
            (
                "keyring".to_string(),
                format!(
                    "--keyring DIR if given; else the host's archlinux-keyring \
                     (/usr/share/keyrings/archlinux*), refreshed from the mirror's {} alone \
                     (not its dependencies), whose signature must be good and by a key the \
                     host's keyring trusts, or by a packager key expired there that three \
                     master keys certify, and then verify under its own keys; private to the \
                     build, not in the image",
                    self.settings.keyring_package
                ),
            ),
            (
                "pacman SigLevel".to_string(),
                self.settings.sig_level.as_pacman().to_string(),
            ),
            (
                "first package".to_string(),
                format!(
                    "{} (then /proc, /sys, /dev, /run mounted for scriptlets and hooks)",
                    self.settings.first_package
                ),
            ),
        ];
        if !self.mkinitcpio.is_empty() {
            notes.push(("mkinitcpio".to_string(), self.mkinitcpio.join(" ")));
        }
        notes.push(("tested".to_string(), TESTED.to_string()));
        notes
    }
}

/// /etc/pacman.d/mirrorlist for the image.
pub fn render_mirrorlist(sources: &Sources) -> String {
    let mut text = format!(
        "# Written by imgforge: the mirror the image was built from ({}).\n",
        sources.origin
    );
    for line in &sources.lines {
        text.push_str(line);
        text.push('\n');
    }
    text
}

impl Arch {
    /// `SERVER/$repo.db` of every repository on the build's server (the
    /// first: what pacman syncs from and [`Pacman::check_synced`] checks;
    /// the others of a host's mirrorlist are the image's fallbacks), then
    /// of each `--repository` on its own servers (an Arch one: the build's).
    fn repository_databases(&self, sources: &Sources) -> Vec<String> {
        let build_servers: Vec<&str> = (sources.lines.iter().take(1))
            .map(|l| pacman::server_url(l))
            .collect();
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for server in &build_servers {
            for repo in &self.settings.repositories {
                pairs.push((server, repo));
            }
        }
        for section in &sources.repositories {
            let own = repositories::section_servers(section);
            let servers = if own.is_empty() { &build_servers } else { &own };
            let name = repositories::section_name(section);
            pairs.extend(servers.iter().map(|s| (*s, name)));
        }
        pairs
            .into_iter()
            .map(|(server, repo)| {
                let base = pacman::expand(server, repo, &self.data.architecture);
                format!("{}/{repo}.db", base.trim_end_matches('/'))
            })
            .collect()
    }

    fn bootstrap_tree(&self, job: &BootstrapJob) -> Result<(), ArchError> {
        let mirror = job
            .sources
            .lines
            .first()
            .map(|l| pacman::server_url(l).to_string())
            .unwrap_or_default();
        let first_repo = self
            .settings
            .repositories
            .first()
            .map_or("core", String::as_str);
        job.progress.note(&format!("pacman from {mirror}"));
        for line in job.sources.lines.iter().take(1) {
            pacman::check_mirror(
                pacman::server_url(line),
                first_repo,
                &self.data.architecture,
            )?;
        }

        let tree = job.work_dir.join("tree");
        let pacman = Pacman {
            config: job.work_dir.join("pacman.conf"),
            root: tree.clone(),
            cache: job.package_cache.to_path_buf(),
            gpgdir: job.work_dir.join("gnupg"),
            logfile: job.work_dir.join("pacman.log"),
            mirror: mirror.clone(),
            architecture: self.data.architecture.clone(),
            source_date_epoch: job.source_date_epoch,
        };
        let dbpath = pacman.dbpath();
        fs::create_dir_all(&dbpath).map_err(at("create", &dbpath))?;
        fs::create_dir_all(&pacman.cache).map_err(at("create", &pacman.cache))?;
        pacman::write_file(&pacman.config, &self.pacman_conf(job.sources))?;

        if let Some(files) = job.bootstrap_files {
            Tool::new("cp")
                .args(["-a", "--no-preserve=ownership"])
                .arg(files.join("."))
                .arg(&tree)
                .run()?;
        }

        check_interrupt()?;
        let keyring = Keyring::init(&pacman.gpgdir, &pacman.config)?;
        let starting = match (job.keyring, &self.settings.starting_keyring) {
            (Some(dir), _) => {
                keyring.populate_from(dir, "--keyring")?;
                None
            }
            (None, Some(dir)) => {
                keyring.populate_from(dir, "the starting keyring")?;
                Some(dir.clone())
            }
            (None, None) => {
                keyring.populate_from_host()?;
                Some(PathBuf::from(HOST_KEYRINGS))
            }
        };
        check_interrupt()?;
        pacman.sync()?;
        pacman.check_synced(&self.settings.repositories, job.mirror_state)?;
        if let Some(starting) = starting {
            job.progress.note(&format!(
                "refreshing the keyring from {} (that package alone)",
                self.settings.keyring_package
            ));
            keyring_package::refresh(
                &pacman,
                &keyring,
                &starting,
                &self.settings.keyring_package,
                &job.work_dir.join("keyring"),
                self.settings.sig_level == SigLevel::Required,
            )?;
        }

        self.add_repository_keys(&keyring, job.sources)?;

        check_interrupt()?;
        pacman.install(std::slice::from_ref(&self.settings.first_package))?;
        check_interrupt()?;
        let mounts = ApiMounts::mount(&tree)?;
        let installed = pacman.install_output(job.packages).and_then(|output| {
            pacman.install_files(job.package_files)?;
            Ok(output)
        });
        mounts.unmount()?;
        let output = installed.map_err(|err| repository_signature(err, job.sources))?;
        drop(keyring);
        // mkinitcpio runs in a hook whose failure pacman does not report.
        kernel_install::check_boot_files(&tree, &self.data, &output)?;

        check_interrupt()?;
        Tool::new("tar")
            .args([
                "--create",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "--acls",
                "--one-file-system",
                "--sort=name",
                "--file",
            ])
            .arg(job.output)
            .arg("-C")
            .arg(&tree)
            .arg(".")
            .run()?;
        Ok(())
    }
}

impl Arch {
    /// Each `--repository` key into the build's keyring, locally signed.
    fn add_repository_keys(&self, keyring: &Keyring, sources: &Sources) -> Result<(), ArchError> {
        for key in &sources.keys {
            let fingerprints =
                repositories::key_fingerprints(&key.host).map_err(|why| ArchError::Repository {
                    spec: key.host.display().to_string(),
                    why,
                })?;
            keyring.add_repository_key(&key.host, &fingerprints)?;
        }
        Ok(())
    }
}

/// A signature error while `--repository` sections are present: said to
/// be theirs to fix too.
fn repository_signature(err: ArchError, sources: &Sources) -> ArchError {
    let signature = matches!(
        err,
        ArchError::Signature { .. } | ArchError::MissingSignature { .. }
    );
    if sources.repositories.is_empty() || !signature {
        return err;
    }
    let names: Vec<&str> = (sources.repositories.iter())
        .map(|s| repositories::section_name(s))
        .collect();
    ArchError::RepositorySignature {
        repositories: names.join(", "),
        source: Box::new(err),
    }
}

/// The module folder name under usr/lib/modules: the kernel's version.
fn kernel_version(root: &Path) -> Option<String> {
    let modules = root.join("usr/lib/modules");
    fs::read_dir(modules)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.path().join("vmlinuz").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_date_comes_from_the_desc_file() {
        let desc = "%NAME%\nlinux\n\n%VERSION%\n6.6-1\n\n%BUILDDATE%\n1700000000\n\n%SIZE%\n1\n";
        assert_eq!(desc_build_date(desc), Some(1_700_000_000));
        assert_eq!(desc_build_date("%NAME%\nx\n"), None);
    }

    fn arch() -> (Arch, DataDir) {
        let dir = DataDir::open(None).unwrap();
        let data = crate::distro::read_data(&dir, "arch").unwrap();
        (Arch::new(data, &dir).unwrap(), dir)
    }

    #[test]
    fn pacman_conf_from_the_data_file_and_the_mirror() {
        let (arch, _dir) = arch();
        let sources = arch
            .sources("rolling", Some("https://m.example/arch/$repo/os/$arch"))
            .unwrap();
        let conf = arch.pacman_conf(&sources);
        assert!(
            conf.contains("\nSigLevel = Required DatabaseOptional\n"),
            "{conf}"
        );
        assert!(conf.contains("\nArchitecture = x86_64\n"), "{conf}");
        for repo in &arch.settings().repositories {
            assert!(
                conf.contains(&format!(
                    "[{repo}]\nServer = https://m.example/arch/$repo/os/$arch\n"
                )),
                "{repo}: {conf}"
            );
        }
        // Without --mirror: the data file's default mirror, in every repository.
        let default = arch.pacman_conf(&arch.sources("rolling", None).unwrap());
        assert_eq!(
            default.matches(&arch.settings().default_mirror).count(),
            arch.settings().repositories.len()
        );
        let never = arch.with_sig_level(SigLevel::Never);
        assert!(never.pacman_conf(&sources).contains("\nSigLevel = Never\n"));
    }

    #[test]
    fn sources_come_from_mirror_host_or_default() {
        let (arch, _dir) = arch();
        let dir = tempfile::tempdir().unwrap();
        // A Debian host's pacman.conf (pacman-package-manager's): no repository.
        let debian = dir.path().join("debian-pacman.conf");
        fs::write(&debian, "[options]\nArchitecture = auto\n").unwrap();
        let sources = arch.image_sources(None, &debian).unwrap();
        let default = format!("Server = {}", arch.settings().default_mirror);
        assert_eq!(sources.lines, std::slice::from_ref(&default));
        assert!(!sources.entries[0].used && sources.entries[1].used);
        assert!(sources.entries[1].from.contains("default_mirror"));
        // No pacman.conf at all: the default, one entry.
        let none = arch.image_sources(None, &dir.path().join("none")).unwrap();
        assert_eq!((none.lines, none.entries.len()), (vec![default], 1));
        // An Arch host: its mirrors, third-party repositories left out;
        // --mirror wins over it.
        let conf = dir.path().join("pacman.conf");
        fs::write(
            &conf,
            "[core]\nServer = https://h.example/$repo/os/$arch\n\n\
             [chaotic-aur]\nServer = https://c.example/$repo/$arch\n",
        )
        .unwrap();
        let host = arch.image_sources(None, &conf).unwrap();
        assert_eq!(host.lines, ["Server = https://h.example/$repo/os/$arch"]);
        assert!(host.origin.contains("pacman.conf"), "{}", host.origin);
        let mirror = arch
            .image_sources(Some("https://m.example/$repo/os/$arch"), &conf)
            .unwrap();
        assert_eq!(mirror.lines, ["Server = https://m.example/$repo/os/$arch"]);
        assert_eq!(mirror.entries[0].from, "--mirror");
    }

    #[test]
    fn mirror_state_reads_the_build_server_and_each_repository() {
        let (arch, _dir) = arch();
        let sources = Sources {
            lines: vec![
                "Server = https://a.example/$repo/os/$arch".into(),
                "Server = https://b.example/$repo/os/$arch".into(),
            ],
            repositories: vec![
                "[tools]\nSigLevel = Required\nServer = file:///srv/tools/$arch/\n".into(),
                "[multilib]\n".into(),
            ],
            ..Sources::default()
        };
        assert_eq!(
            arch.mirror_state_files("rolling", &sources),
            [
                "https://a.example/core/os/x86_64/core.db",
                "https://a.example/extra/os/x86_64/extra.db",
                "file:///srv/tools/x86_64/tools.db",
                "https://a.example/multilib/os/x86_64/multilib.db",
            ]
        );
        let conf = arch.pacman_conf(&sources);
        assert!(
            conf.ends_with(
                "[multilib]\nServer = https://a.example/$repo/os/$arch\n\
                 Server = https://b.example/$repo/os/$arch\n"
            ),
            "{conf}"
        );
        assert!(conf.contains("\n[tools]\nSigLevel = Required\n"), "{conf}");
    }

    #[test]
    fn mirror_must_have_the_repo_placeholder() {
        let (arch, _dir) = arch();
        let err = arch
            .sources("rolling", Some("https://m.example/arch/core/os/x86_64"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("$repo") && err.contains("m.example"), "{err}");
    }

    #[test]
    fn mkinitcpio_drop_in_has_cloud_drivers_and_no_autodetect() {
        let (arch, dir) = arch();
        let files = arch.data().bootstrap_files.clone().unwrap();
        let path = dir
            .path()
            .join("rootfs")
            .join(files)
            .join("etc/mkinitcpio.conf.d/imgforge.conf");
        let lines = mkinitcpio_settings(&fs::read_to_string(&path).unwrap());
        let modules = mkinitcpio_array(&lines, "MODULES").unwrap();
        let hooks = mkinitcpio_array(&lines, "HOOKS").unwrap();
        for module in ["nvme", "ena", "virtio_blk", "virtio_pci"] {
            assert!(modules.iter().any(|m| m == module), "{module}: {modules:?}");
        }
        assert!(!hooks.iter().any(|h| h == "autodetect"), "{hooks:?}");
        for hook in ["base", "udev", "block", "filesystems"] {
            assert!(hooks.iter().any(|h| h == hook), "{hook}: {hooks:?}");
        }
        // base before udev before block before filesystems.
        let at = |h: &str| hooks.iter().position(|x| x == h).unwrap();
        assert!(
            at("base") < at("udev") && at("udev") < at("block") && at("block") < at("filesystems")
        );
        // --plan shows the same settings.
        let notes = arch.plan_notes();
        let plan = notes.iter().find(|(k, _)| k == "mkinitcpio").unwrap();
        assert!(
            plan.1.contains("ena") && !plan.1.contains("autodetect"),
            "{plan:?}"
        );
        assert!(
            notes
                .iter()
                .any(|(k, v)| k == "pacman SigLevel" && v == "Required DatabaseOptional")
        );
        assert!(
            notes
                .iter()
                .any(|(k, v)| k == "keyring" && v.contains("archlinux-keyring"))
        );
    }

    #[test]
    fn package_list_for_each_kernel() {
        let (arch, _dir) = arch();
        let data = arch.data();
        assert!(data.kernels.len() >= 2, "{:?}", data.kernels);
        for (kernel, kernel_packages) in &data.kernels {
            let packages = data.packages(kernel, &["htop".into()]).unwrap();
            for p in kernel_packages.iter().chain(&data.packages) {
                assert!(
                    packages.contains(p),
                    "{kernel}: {p} missing from {packages:?}"
                );
            }
            assert_eq!(packages.last().map(String::as_str), Some("htop"));
            // No other kernel's packages.
            for (other, other_packages) in &data.kernels {
                if other != kernel {
                    for p in other_packages
                        .iter()
                        .filter(|p| !kernel_packages.contains(p))
                    {
                        assert!(!packages.contains(p), "{kernel} has {other}'s {p}");
                    }
                }
            }
            let mut unique = packages.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), packages.len(), "{packages:?}");
        }
        let err = data.packages("zen", &[]).unwrap_err().to_string();
        assert!(
            err.contains("`zen`") && err.contains("linux") && err.contains("lts"),
            "{err}"
        );
    }

    #[test]
    fn image_mirrorlist_names_the_build_mirror() {
        let (arch, _dir) = arch();
        let sources = arch
            .sources("rolling", Some("https://m.example/$repo/os/$arch"))
            .unwrap();
        let root = tempfile::tempdir().unwrap();
        arch.configure(root.path(), &sources).unwrap();
        let text = fs::read_to_string(root.path().join("etc/pacman.d/mirrorlist")).unwrap();
        let servers: Vec<&str> = text.lines().filter(|l| l.starts_with("Server")).collect();
        assert_eq!(servers, ["Server = https://m.example/$repo/os/$arch"]);
    }

    #[test]
    fn desc_files_give_name_and_version() {
        let desc = "%NAME%\nlinux\n\n%VERSION%\n6.6.1.arch1-1\n\n%BASE%\nlinux\n";
        let p = parse_desc(desc).unwrap();
        assert_eq!(
            (p.name.as_str(), p.version.as_str()),
            ("linux", "6.6.1.arch1-1")
        );
        assert!(parse_desc("%NAME%\nx\n").is_none());
    }
}
