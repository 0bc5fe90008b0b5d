//! The AWS fixture: moto's server (one per test file, shared by its tests
//! through [`moto`]), the recording, fault-injecting proxy in front of it,
//! images made of patterns, and imgforge run with fake credentials and no
//! trace of the host's AWS setup.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const BLOCK: u64 = 524_288;
pub const MIB: u64 = 1 << 20;
pub const SUPPORT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited ({status}) before listening on port {port}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not listen on port {port} within 60 s");
}

/// A process killed when the test ends, pass or fail.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto's server on a free port (tests/support/moto_server.py: moto with
/// EBS's real block size and integer block indices).
pub struct Moto {
    pub port: u16,
    _process: Background,
}

/// This test file's moto, started on first use and shared by its tests (a
/// test that needs an account of its own starts one with [`Moto::start`], or
/// uses names or a region no other test of the file uses). It is killed when
/// the test binary exits.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        // Started from a thread that lives as long as the process: moto gets
        // SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG).
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            sender.send(Moto::start()).unwrap();
            loop {
                std::thread::park();
            }
        });
        receiver.recv().expect("start moto")
    })
}

impl Moto {
    /// A moto of the calling test's own, killed when it is dropped (or when
    /// the thread that started it ends).
    pub fn start() -> Self {
        let probe = Command::new("python3")
            .args(["-c", "import moto.server, werkzeug, flask"])
            .output();
        match probe {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "moto's server is not installed: run `pip install 'moto[server]'` \
                 (python3 said: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(err) => panic!(
                "python3 is needed for moto's server ({err}); install python3, then \
                 `pip install 'moto[server]'`"
            ),
        }
        let port = free_port();
        let mut command = Command::new("python3");
        command
            .arg(format!("{SUPPORT}/moto_server.py"))
            .args(["127.0.0.1", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("start moto");
        wait_for_port(port, &mut child, "moto");
        Moto {
            port,
            _process: Background(child),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The recording, fault-injecting proxy in front of a moto.
pub struct Proxy {
    pub port: u16,
    pub log: PathBuf,
    _process: Background,
}

impl Proxy {
    pub fn start(moto: &Moto, dir: &Path, faults: &[&str]) -> Self {
        let port = free_port();
        let log = dir.join(format!("proxy-{port}.jsonl"));
        let mut child = Command::new("python3")
            .arg(format!("{SUPPORT}/aws_proxy.py"))
            .args(["--listen", &port.to_string()])
            .args(["--upstream", &moto.port.to_string()])
            .arg("--log")
            .arg(&log)
            .args(faults)
            .stdout(Stdio::null())
            .spawn()
            .expect("start proxy");
        wait_for_port(port, &mut child, "aws_proxy.py");
        Proxy {
            port,
            log,
            _process: Background(child),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request recorded so far.
    pub fn requests(&self) -> Vec<Value> {
        match std::fs::read_to_string(&self.log) {
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn operations<'a>(requests: &'a [Value], op: &str) -> Vec<&'a Value> {
        requests.iter().filter(|r| r["operation"] == op).collect()
    }
}

/// Deterministic bytes (xorshift), so a test's image is the same every run.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A sparse image of `size` bytes with data written at the given extents.
pub fn make_image(path: &Path, size: u64, extents: &[(u64, Vec<u8>)]) {
    let mut file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    for (offset, data) in extents {
        file.seek(SeekFrom::Start(*offset)).unwrap();
        file.write_all(data).unwrap();
    }
    file.sync_all().unwrap();
}

pub fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// The image's block `index`, zero-padded to the block size.
pub fn image_block(image: &[u8], index: u64) -> Vec<u8> {
    let start = (index * BLOCK) as usize;
    let end = (start + BLOCK as usize).min(image.len());
    let mut block = image[start..end].to_vec();
    block.resize(BLOCK as usize, 0);
    block
}

pub fn b64_sha256(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

/// `imgforge` with fake credentials and no trace of the host's AWS setup.
pub fn imgforge(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgforge"));
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1");
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run imgforge");
    eprintln!(
        "--- imgforge {:?}\n--- stdout:\n{}--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A 4 MiB pattern image of `seed` (100,000 bytes of data at 1 MiB) with
/// a build manifest beside it: what the publishing tests upload.
pub fn pattern_image(dir: &Path, file: &str, seed: u64) -> PathBuf {
    let path = dir.join(file);
    make_image(&path, 4 * MIB, &[(MIB, pattern(seed, 100_000))]);
    write_build_manifest(&path);
    path
}

/// `imgforge upload IMAGE --json` against `url` (moto or the proxy), four
/// workers. Pattern images are not disks: nothing to read the platform
/// from, so the boot mode and architecture are given.
pub fn upload_pattern(dir: &Path, url: &str, image: &Path, extra: &[&str]) -> Output {
    run(imgforge(dir)
        .arg("upload")
        .arg(image)
        .args(["--endpoint-url", url, "--workers", "4", "--json"])
        .args(["--boot-mode", "legacy-bios", "--arch", "x86_64"])
        .args(extra))
}

/// Runs a boto3 snippet against `url` (moto or the proxy), with
/// `client(service, region='us-east-1')` defined; answers what it prints as
/// JSON (`null` when it prints nothing).
pub fn boto(url: &str, code: &str) -> Value {
    let script = format!(
        "import boto3, json, sys\n\
         def client(service, region='us-east-1'):\n    \
         return boto3.client(service, endpoint_url=sys.argv[1], region_name=region, \
         aws_access_key_id='test', aws_secret_access_key='test')\n{code}"
    );
    let out = Command::new("python3")
        .args(["-c", &script, url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn json_stdout(out: &Output) -> Value {
    assert!(out.status.success(), "imgforge failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

pub fn download(dir: &Path, url: &str, snapshot: &str, size: u64, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = run(imgforge(dir)
        .args(["download", snapshot, "-o"])
        .arg(&path)
        .args(["--size", &size.to_string(), "--endpoint-url", url]));
    assert!(out.status.success(), "download failed: {}", stderr(&out));
    path
}

/// Downloads `snapshot` and asserts it reads back byte-identical to `image`.
pub fn assert_reads_back(
    dir: &Path,
    url: &str,
    snapshot: &str,
    size: u64,
    image: &Path,
) -> PathBuf {
    let back = download(dir, url, snapshot, size, "back.raw");
    assert_eq!(
        sha256_file(&back),
        sha256_file(image),
        "the snapshot reads back differently"
    );
    back
}

/// Writes the build manifest `IMAGE.json` beside `image` as `imgforge build`
/// seals it (after the image, with the image's size and sha256), so that
/// upload can trust its sha256 instead of hashing the image first.
pub fn write_build_manifest(image: &Path) {
    let size = std::fs::metadata(image).unwrap().len();
    let manifest = serde_json::json!({
        "imgforge_version": "test", "distro": "debian", "release": "bookworm",
        "architecture": "x86_64", "size_class": "small", "kernel_version": "6.1",
        "kernel_cmdline": "", "boot_modes": ["bios"],
        "disk": {"size_bytes": size, "disk_guid": "00000000-0000-0000-0000-000000000000",
                 "partitions": []},
        "layers": [], "packages": [], "build_time": 0,
        "sha256": sha256_file(image),
    });
    // The manifest is written after the image: its mtime is not older.
    std::thread::sleep(std::time::Duration::from_millis(10));
    std::fs::write(format!("{}.json", image.display()), manifest.to_string()).unwrap();
}
