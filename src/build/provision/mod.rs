//! Stage 2b, provision: the user's own programs run as root inside the
//! image's tree, after its packages and layers: the `--ansible` playbook
//! ([`ansible`]), then the `--script FILE`s, in order. The tree is made
//! ready and put back by [`session`]; what each step changed (packages
//! added) is recorded for the manifest, and the provisioned tree is cached
//! ([`cache`]): an identical rebuild reruns nothing.

pub mod ansible;
pub mod cache;
pub mod session;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::bootstrap::Rootfs;
use super::context::BuildContext;
use super::request::ScriptFile;
use crate::distro::DistroError;
use crate::image::manifest::ProvisionRecord;
use crate::sys::api_mounts::kill_processes_in;
use crate::sys::fsio::{PathError, at};
use crate::sys::tool::{Tool, ToolError};
use session::{SCRATCH, Session, SessionError};

/// How many last lines of a failed step's output its error carries.
const TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Io(#[from] PathError),
    #[error(transparent)]
    Distro(#[from] DistroError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(
        "playbook {playbook} failed ({status}) against the image's tree; no image was written.\n\
         --- last output of ansible-playbook ---\n{tail}"
    )]
    Playbook {
        playbook: PathBuf,
        status: String,
        tail: String,
    },
    #[error(
        "script {script} failed ({status}) inside the image's tree; no image was written.\n\
         --- last output of {script} ---\n{tail}"
    )]
    Script {
        script: PathBuf,
        status: String,
        tail: String,
    },
}

/// Runs every provisioning step; updates `rootfs.packages` to what the
/// tree holds afterwards and `rootfs.provisioned` to what each step did.
/// `configure_vars` and `epoch` are what configured the tree (part of the
/// cached provisioned tree's key, with the steps' inputs).
pub fn run(
    ctx: &BuildContext,
    rootfs: &mut Rootfs,
    configure_vars: &BTreeMap<&str, String>,
    epoch: u64,
) -> Result<(), ProvisionError> {
    let request = &ctx.request;
    if !wanted(ctx) {
        return Ok(());
    }
    let key = cache::key(ctx, rootfs, configure_vars, epoch)?;
    if cache::restore(ctx, &key, rootfs)? {
        return Ok(());
    }
    let session = Session::open(
        &rootfs.dir,
        &rootfs.kernel.version,
        &local_sources(
            request
                .sources
                .lines
                .iter()
                .chain(&request.sources.repositories),
        ),
    )?;
    let env = environment(ctx, rootfs);
    request
        .distro
        .prepare_package_manager(&rootfs.dir, &request.sources, ctx.work_dir())?;
    // The package lists were removed from the tree: fresh ones, so that a
    // step's `apt-get install` works as on an instance.
    if let Some(command) = request.distro.refresh_package_lists() {
        ctx.progress.note(&command.join(" "));
        chroot(&rootfs.dir, &env).args(command).run()?;
    }
    let mut records = Vec::new();
    if let Some(run) = &request.ansible {
        ctx.progress
            .note(&format!("ansible-playbook {}", run.playbook.display()));
        let before = rootfs.packages.clone();
        let vars = ansible_variables(&env);
        ansible::run_playbook(&rootfs.dir, ctx.work_dir(), &env, &vars, run)?;
        rootfs.packages = request.distro.installed_packages(&rootfs.dir)?;
        records.push(ProvisionRecord {
            kind: "ansible".into(),
            name: run.playbook.display().to_string(),
            sha256: run.dir_sha256.clone(),
            packages_added: added(&before, &rootfs.packages),
            network: true,
            requires: run.packages.clone(),
        });
    }
    for (n, script) in request.scripts.iter().enumerate() {
        ctx.check_interrupt().map_err(ToolError::from)?;
        ctx.progress
            .note(&format!("script {}", script.path.display()));
        let before = rootfs.packages.clone();
        run_script(&session, &rootfs.dir, &env, n, script)?;
        rootfs.packages = request.distro.installed_packages(&rootfs.dir)?;
        records.push(ProvisionRecord {
            kind: "script".into(),
            name: script.path.display().to_string(),
            sha256: script.sha256.clone(),
            packages_added: added(&before, &rootfs.packages),
            network: true,
            requires: Vec::new(),
        });
    }
    session.close()?;
    cache::store(ctx, &key, &rootfs.dir, &records);
    rootfs.provisioned = records;
    Ok(())
}

/// Whether the build has provisioning steps.
pub fn wanted(ctx: &BuildContext) -> bool {
    !ctx.request.scripts.is_empty() || ctx.request.ansible.is_some()
}

/// Checks the host has what the steps run (before any work).
pub fn check_host(ctx: &BuildContext) -> Result<(), ToolError> {
    match ctx.request.ansible {
        Some(_) => ansible::ANSIBLE_PLAYBOOK.require(),
        None => Ok(()),
    }
}

/// Packages in `after` and not in `before`, as `name=version`.
fn added(
    before: &[crate::image::manifest::Package],
    after: &[crate::image::manifest::Package],
) -> Vec<String> {
    after
        .iter()
        .filter(|p| !before.contains(p))
        .map(|p| format!("{}={}", p.name, p.version))
        .collect()
}

/// The IMGFORGE_* variables as Ansible's imgforge_* ones
/// (`IMGFORGE_ARCH` is `imgforge_architecture`).
fn ansible_variables(env: &[(String, String)]) -> Vec<(String, String)> {
    env.iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("IMGFORGE_")?.to_ascii_lowercase();
            let name = if name == "arch" {
                "architecture".into()
            } else {
                name
            };
            Some((format!("imgforge_{name}"), v.clone()))
        })
        .collect()
}

/// The folders of `file://` sources (`file:///srv/repo` or `file:/srv/repo`;
/// a pacman URL up to its first `$repo`/`$arch`).
fn local_sources<'a>(lines: impl Iterator<Item = &'a String>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = lines
        .flat_map(|line| line.split_whitespace())
        .filter_map(|word| word.strip_prefix("file:"))
        .map(|path| path.split('$').next().unwrap_or_default())
        .map(|path| PathBuf::from(format!("/{}", path.trim_matches('/'))))
        .filter(|path| path.is_dir() && path != Path::new("/"))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// The variables every step sees.
fn environment(ctx: &BuildContext, rootfs: &Rootfs) -> Vec<(String, String)> {
    let request = &ctx.request;
    [
        ("PATH", Session::path_variable()),
        ("HOME", "/root".into()),
        ("LANG", "C.UTF-8".into()),
        ("DEBIAN_FRONTEND", "noninteractive".into()),
        ("IMGFORGE_DISTRO", request.distro.data().name.clone()),
        ("IMGFORGE_RELEASE", request.release.clone()),
        ("IMGFORGE_ARCH", request.architecture.name.clone()),
        ("IMGFORGE_SIZE_CLASS", request.size_class.name.clone()),
        ("IMGFORGE_KERNEL_VERSION", rootfs.kernel.version.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn chroot(root: &Path, env: &[(String, String)]) -> Tool {
    env.iter()
        .fold(Tool::new("chroot").arg(root), |tool, (k, v)| tool.env(k, v))
}

/// Copies the script onto the session's /run and runs it there (through
/// /bin/sh when it has no `#!` line); whatever it leaves running is stopped.
fn run_script(
    session: &Session,
    root: &Path,
    env: &[(String, String)],
    n: usize,
    script: &ScriptFile,
) -> Result<(), ProvisionError> {
    let bytes = fs::read(&script.path).map_err(at("read", &script.path))?;
    let name = script
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "script".into());
    let inside = format!("{SCRATCH}/scripts/{:02}-{name}", n + 1);
    let host = session.host_path(&inside);
    if let Some(dir) = host.parent() {
        fs::create_dir_all(dir).map_err(at("create", dir))?;
    }
    fs::write(&host, &bytes).map_err(at("write", &host))?;
    fs::set_permissions(&host, fs::Permissions::from_mode(0o755)).map_err(at("chmod", &host))?;
    // Output goes to a log on the session's /run, not to a pipe: a daemon
    // the script leaves behind would hold a pipe open.
    let log_inside = format!("{SCRATCH}/logs/{:02}-{name}.log", n + 1);
    let log = session.host_path(&log_inside);
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).map_err(at("create", dir))?;
    }
    let mut tool = chroot(root, env)
        .args(["/bin/sh", "-c", "exec >\"$0\" 2>&1 </dev/null; exec \"$@\""])
        .arg(&log_inside);
    if !bytes.starts_with(b"#!") {
        tool = tool.arg("/bin/sh");
    }
    let result = tool.arg(&inside).run();
    kill_processes_in(root);
    let output = fs::read_to_string(&log).unwrap_or_default();
    for line in output.lines() {
        log::debug!("{name}: {line}");
    }
    match result {
        Ok(_) => Ok(()),
        Err(ToolError::Failed { status, .. }) => {
            let lines: Vec<&str> = output.lines().collect();
            let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
            Err(ProvisionError::Script {
                script: script.path.clone(),
                status,
                tail,
            })
        }
        Err(other) => Err(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_sources_are_the_folders_of_file_urls() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().display();
        let lines = [
            format!("deb [signed-by=/k.asc] file://{base} ./"),
            format!("Server = file://{base}/$repo/os/$arch"),
            format!("[tools]\nServer = file://{base}/$arch\n"),
            "deb http://deb.debian.org/debian bookworm main".to_string(),
            "Server = file:///nonexistent/imgforge/$repo".to_string(),
            "Server = file:///$repo".to_string(),
        ];
        let dirs = local_sources(lines.iter());
        assert_eq!(dirs, vec![dir.path().to_path_buf()]);
    }
}
