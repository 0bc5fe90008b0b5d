//! pacman made usable for the user's `--script` steps: the image ships no
//! keyring and no synced databases (its first boot makes the keyring; the
//! bootstrap's databases are scrubbed), so before the steps, from the host
//! (as the bootstrap drives pacman), the tree gets
//!
//! - a keyring in its own /etc/pacman.d/gnupg, populated from the image's
//!   own archlinux-keyring (usr/share/pacman/keyrings) with each
//!   `--repository` key added and locally signed;
//! - its /var/lib/pacman/sync databases, synced from the build's mirror and
//!   repositories (the bootstrap's pacman.conf: the servers the image's
//!   mirrorlist and `--repository` sections name).
//!
//! A step's `pacman -S` inside the tree then reads what the image's own
//! pacman.conf names. Both are removed after the steps (the data file's
//! `scrub`: etc/pacman.d/gnupg, var/lib/pacman/sync/*).

use std::path::Path;

use super::keyring::{Keyring, PACKAGE_KEYRING_DIR};
use super::pacman::{self, Pacman};
use super::{Arch, ArchError};
use crate::distro::Sources;

impl Arch {
    /// The tree's keyring and synced databases for the steps (see the
    /// module's comment); `work_dir` holds the pacman.conf and log.
    pub fn prepare_steps(
        &self,
        root: &Path,
        sources: &Sources,
        work_dir: &Path,
    ) -> Result<(), ArchError> {
        let dir = work_dir.join("arch-steps");
        std::fs::create_dir_all(&dir).map_err(crate::sys::fsio::at("create", &dir))?;
        let config = dir.join("pacman.conf");
        pacman::write_file(&config, &self.pacman_conf(sources))?;
        let pacman = Pacman {
            config,
            root: root.to_path_buf(),
            cache: root.join("var/cache/pacman/pkg"),
            gpgdir: root.join("etc/pacman.d/gnupg"),
            logfile: dir.join("pacman.log"),
            mirror: (sources.lines.first())
                .map(|l| pacman::server_url(l).to_string())
                .unwrap_or_default(),
            architecture: self.data.architecture.clone(),
            source_date_epoch: 0,
        };
        let keyring = Keyring::init(&pacman.gpgdir, &pacman.config)?;
        keyring.populate_from(
            &root.join(PACKAGE_KEYRING_DIR),
            "the image's archlinux-keyring",
        )?;
        self.add_repository_keys(&keyring, sources)?;
        pacman.sync()
    }
}
