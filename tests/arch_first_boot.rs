//! The first-boot hostname script as it runs on an Arch instance: no
//! `hostname` program (Arch's base lacks inetutils) and no hostnamectl
//! answering, the metadata service a local stand-in (IMDSv2: a PUT for the
//! token, then `meta-data/local-hostname` with it), the kernel's hostname
//! in a UTS namespace of its own (`unshare --uts`) so the host's is
//! untouched.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};

mod common;

use common::{Need, prerequisites, text};

const LIBEXEC: &str = "rootfs/first-boot-imgforge/usr/local/libexec/imgforge";

/// IMDSv2 on a free local port: the token for a PUT, the name for a GET
/// that carries it. Prints its port on the first line.
const IMDS: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def reply(self, code, body):
        self.send_response(code); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_PUT(self):
        self.reply(200, b"tok") if self.path == "/latest/api/token" else self.reply(404, b"")
    def do_GET(self):
        ok = self.headers.get("X-aws-ec2-metadata-token") == "tok" and self.path == "/latest/meta-data/local-hostname"
        self.reply(200, b"ip-10-1-2-3.ec2.internal") if ok else self.reply(401, b"")
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

#[test]
fn hostname_is_set_from_imds_without_the_hostname_program() {
    if !prerequisites(
        "hostname_is_set_from_imds_without_the_hostname_program",
        &[&[
            Need::Root,
            Need::Tool("unshare"),
            Need::Tool("curl"),
            Need::Tool("python3"),
            Need::Tool("dash"),
        ]],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let libexec = Path::new(env!("CARGO_MANIFEST_DIR")).join(LIBEXEC);
    // The script sources imds.sh by its installed path: point it here.
    let script = fs::read_to_string(libexec.join("imds-hostname"))
        .unwrap()
        .replace(
            "/usr/local/libexec/imgforge/imds.sh",
            &libexec.join("imds.sh").display().to_string(),
        );
    assert!(
        !script.lines().any(|l| {
            let l = l.trim_start();
            !l.starts_with('#') && (l.starts_with("hostname ") || l.contains("$(hostname"))
        }),
        "the script still runs `hostname`:\n{script}"
    );
    fs::write(dir.path().join("imds-hostname"), &script).unwrap();
    // A PATH with only what the script may rely on: no hostname, no hostnamectl.
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    for tool in ["dash", "curl"] {
        let found = common::run_program("sh", &["-c", &format!("command -v {tool}")]);
        let path = String::from_utf8(found.stdout).unwrap();
        symlink(path.trim(), bin.join(tool)).unwrap();
    }
    let mut server = Command::new("python3")
        .args(["-c", IMDS])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let run = |initial: &str| {
        Command::new("unshare")
            .args(["--uts", "dash", "-c"])
            .arg(format!(
                "echo {initial} > /proc/sys/kernel/hostname && \
                 PATH={bin} dash {dir}/imds-hostname; \
                 read -r now < /proc/sys/kernel/hostname; echo \"now=$now\"",
                bin = bin.display(),
                dir = dir.path().display(),
            ))
            .env("IMGFORGE_IMDS", format!("http://127.0.0.1:{}", port.trim()))
            .output()
            .unwrap()
    };
    let fresh = run("localhost");
    let named = run("from-dhcp");
    server.kill().unwrap();
    server.wait().unwrap();
    let all = text(&fresh);
    assert!(fresh.status.success(), "{all}");
    assert!(
        all.contains("hostname set to ip-10-1-2-3.ec2.internal")
            && all.contains("now=ip-10-1-2-3.ec2.internal"),
        "{all}"
    );
    // A name from DHCP is kept.
    let all = text(&named);
    assert!(
        all.contains("hostname is from-dhcp already") && all.contains("now=from-dhcp"),
        "{all}"
    );
}
