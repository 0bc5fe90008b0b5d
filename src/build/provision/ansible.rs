//! `--ansible PLAYBOOK`: the host's `ansible-playbook` (the user's own
//! Ansible) against the image's tree through Ansible's chroot connection,
//! inside the provisioning [`super::session::Session`], so that its
//! modules find the stand-ins first on PATH: `ansible.posix.sysctl`'s
//! reload (`sysctl -p`, its default) and `systemd`'s starts leave the build
//! host alone, and the settings stay in the image's files. Facts are the
//! image's (the setup module runs inside the tree). Ansible's own state
//! (its home, temporary files) goes to the work directory, not the host's
//! home.

use std::fs;
use std::path::Path;

use super::ProvisionError;
use crate::build::request::AnsibleRun;
use crate::sys::fsio::at;
use crate::sys::tool::{HostTool, Tool, ToolError};

/// The host tool, with the Debian package that has it.
pub const ANSIBLE_PLAYBOOK: HostTool = HostTool::new("ansible-playbook", "ansible");
/// Ansible's connection to a tree.
const CONNECTION: &str = "community.general.chroot";

/// Runs the playbook against `root`; `env` is what every provisioning step
/// sees, `vars` the imgforge_* variables.
pub fn run_playbook(
    root: &Path,
    work_dir: &Path,
    env: &[(String, String)],
    vars: &[(String, String)],
    ansible: &AnsibleRun,
) -> Result<(), ProvisionError> {
    let home = work_dir.join("ansible");
    fs::create_dir_all(&home).map_err(at("create", &home))?;
    let extra: serde_json::Map<String, serde_json::Value> = vars
        .iter()
        .chain(&ansible.vars)
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .chain([(
            "ansible_python_interpreter".to_string(),
            serde_json::Value::String("/usr/bin/python3".into()),
        )])
        .collect();
    let vars_file = home.join("imgforge-vars.json");
    fs::write(&vars_file, serde_json::Value::Object(extra).to_string())
        .map_err(at("write", &vars_file))?;
    let mut tool = Tool::new("sh")
        // One stream, so that a failure's last lines are Ansible's report.
        .args(["-c", "exec \"$@\" 2>&1", "ansible-playbook"])
        .arg("ansible-playbook")
        .arg("--inventory")
        .arg(format!("{},", root.display()))
        .args(["--connection", CONNECTION])
        .arg("--extra-vars")
        .arg(format!("@{}", vars_file.display()))
        .arg(&ansible.playbook);
    for (key, value) in env {
        // The host's PATH for ansible-playbook itself, the tree's after it.
        if key != "PATH" {
            tool = tool.env(key, value);
        }
    }
    let host_path = std::env::var("PATH").unwrap_or_default();
    let tree_path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let result = tool
        .env("PATH", format!("{tree_path}:{host_path}"))
        .env("ANSIBLE_HOME", &home)
        .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
        .env("ANSIBLE_REMOTE_TEMP", "/run/imgforge/ansible")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "false")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_HOST_KEY_CHECKING", "false")
        .env("ANSIBLE_LOCALHOST_WARNING", "false")
        .run();
    match result {
        Ok(_) => Ok(()),
        Err(ToolError::Failed { status, tail, .. }) => Err(ProvisionError::Playbook {
            playbook: ansible.playbook.clone(),
            status,
            tail,
        }),
        Err(other) => Err(other.into()),
    }
}
