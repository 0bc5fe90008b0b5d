//! A stand-in for the EC2 instance metadata service (IMDSv2 only) that a
//! `boot-test --ec2` guest reaches at 169.254.169.254.
//!
//! The server listens on 127.0.0.1; QEMU's user network runs
//! `imgforge imds-relay ADDR` for each guest connection to
//! 169.254.169.254:80 (a `guestfwd` with `cmd:`), which copies the bytes
//! both ways. Nothing on the host's network changes.
//!
//! Like the real service it hands out session tokens (`PUT
//! /latest/api/token` with a TTL header) and answers metadata only to
//! requests carrying one; it counts what it was asked, so a test can say
//! that every call used IMDSv2 and how often user-data was fetched.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the stand-in serves for one instance.
#[derive(Debug, Clone)]
pub struct InstanceMetadata {
    pub instance_id: String,
    pub local_hostname: String,
    pub availability_zone: String,
    pub public_key: String,
    pub user_data: Option<Vec<u8>>,
}

/// Requests seen, by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImdsCounts {
    pub tokens_issued: u32,
    /// Metadata requests without a valid token (IMDSv1 style): refused.
    pub refused_without_token: u32,
    pub metadata_answered: u32,
    pub user_data_fetches: u32,
    pub not_found: u32,
}

pub struct ImdsServer {
    addr: SocketAddr,
    counts: Arc<Mutex<ImdsCounts>>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("cannot start the metadata stand-in on 127.0.0.1")]
    Listen(#[source] std::io::Error),
    #[error("imds-relay: cannot reach the metadata stand-in at {addr}")]
    Relay {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl ImdsServer {
    pub fn start(metadata: InstanceMetadata) -> Result<Self, ImdsError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(ImdsError::Listen)?;
        let addr = listener.local_addr().map_err(ImdsError::Listen)?;
        let counts = Arc::new(Mutex::new(ImdsCounts::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(ServerState {
            tree: MetadataTree::of(&metadata),
            metadata,
            tokens: Mutex::new(Vec::new()),
            counts: counts.clone(),
        });
        let stopping = stop.clone();
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let state = state.clone();
                thread::spawn(move || {
                    let _ = serve_connection(stream, &state);
                });
            }
        });
        Ok(Self {
            addr,
            counts,
            stop,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counts(&self) -> ImdsCounts {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for ImdsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

struct ServerState {
    metadata: InstanceMetadata,
    tree: MetadataTree,
    tokens: Mutex<Vec<String>>,
    counts: Arc<Mutex<ImdsCounts>>,
}

/// One HTTP request: method, path and headers (lower-case names).
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut words = line.split_whitespace();
    let (method, path) = (words.next()?.to_string(), words.next()?.to_string());
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            break;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    if length > 0 {
        let mut body = vec![0u8; length.min(1 << 16)];
        reader.read_exact(&mut body).ok()?;
    }
    Some(Request {
        method,
        path,
        headers,
    })
}

fn serve_connection(stream: TcpStream, state: &ServerState) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    // One request per connection (answers say `Connection: close`).
    if let Some(request) = read_request(&mut reader) {
        let (status, body) = answer(&request, state);
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Error",
        };
        write!(
            writer,
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        writer.write_all(&body)?;
        writer.flush()?;
    }
    let _ = writer.shutdown(Shutdown::Both);
    Ok(())
}

fn answer(request: &Request, state: &ServerState) -> (u16, Vec<u8>) {
    let mut counts = state.counts.lock().unwrap();
    if request.path == "/latest/api/token" {
        if request.method != "PUT"
            || !request
                .headers
                .contains_key("x-aws-ec2-metadata-token-ttl-seconds")
        {
            return (
                400,
                b"IMDSv2 token requests are PUT with a TTL header".to_vec(),
            );
        }
        counts.tokens_issued += 1;
        let token = format!("imgforge-imds-token-{}", counts.tokens_issued);
        state.tokens.lock().unwrap().push(token.clone());
        return (200, token.into_bytes());
    }
    let token_ok = request
        .headers
        .get("x-aws-ec2-metadata-token")
        .is_some_and(|t| state.tokens.lock().unwrap().contains(t));
    if !token_ok {
        counts.refused_without_token += 1;
        return (401, Vec::new());
    }
    let body = match version_relative(&request.path) {
        Some("user-data") => {
            counts.user_data_fetches += 1;
            state.metadata.user_data.clone()
        }
        Some(path) => state.tree.get(path),
        None => None,
    };
    match body {
        Some(body) => {
            counts.metadata_answered += 1;
            (200, body)
        }
        None => {
            counts.not_found += 1;
            (404, Vec::new())
        }
    }
}

/// The path below the version ("latest" or a dated version such as
/// "2021-03-23", which cloud-init asks for), without slashes at either end.
fn version_relative(path: &str) -> Option<&str> {
    let path = path.trim_start_matches('/');
    let (version, rest) = path.split_once('/').unwrap_or((path, ""));
    let dated = version.len() == 10
        && version.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    (version == "latest" || dated).then(|| rest.trim_end_matches('/'))
}

/// The instance's metadata as the service lays it out: leaves by path, and
/// a listing for every folder (names, with `/` on sub-folders), which
/// cloud-init's EC2 datasource walks.
struct MetadataTree {
    leaves: BTreeMap<String, Vec<u8>>,
}

impl MetadataTree {
    fn of(m: &InstanceMetadata) -> Self {
        let region = m
            .availability_zone
            .trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let document = serde_json::json!({
            "instanceId": m.instance_id,
            "availabilityZone": m.availability_zone,
            "region": region,
            "instanceType": "c7i.xlarge",
            "imageId": "ami-0imgforge0rehearsal",
            "architecture": "x86_64",
            "accountId": "123456789012",
            "privateIp": "169.254.10.10",
        });
        let leaves = [
            ("meta-data/instance-id", m.instance_id.clone()),
            ("meta-data/local-hostname", m.local_hostname.clone()),
            ("meta-data/hostname", m.local_hostname.clone()),
            ("meta-data/instance-type", "c7i.xlarge".into()),
            ("meta-data/ami-id", "ami-0imgforge0rehearsal".into()),
            (
                "meta-data/placement/availability-zone",
                m.availability_zone.clone(),
            ),
            ("meta-data/placement/region", region.to_string()),
            ("meta-data/public-keys/0/openssh-key", m.public_key.clone()),
            ("dynamic/instance-identity/document", document.to_string()),
        ];
        Self {
            leaves: leaves
                .into_iter()
                .map(|(path, value)| (path.to_string(), value.into_bytes()))
                .collect(),
        }
    }

    /// A leaf's value or a folder's listing.
    fn get(&self, path: &str) -> Option<Vec<u8>> {
        if let Some(value) = self.leaves.get(path) {
            return Some(value.clone());
        }
        // Key pairs list as INDEX=NAME, as on EC2.
        if path == "meta-data/public-keys" {
            return Some(b"0=imgforge-boot-test".to_vec());
        }
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let mut names: Vec<String> = Vec::new();
        for key in self.leaves.keys() {
            let Some(below) = key.strip_prefix(&prefix) else {
                continue;
            };
            let name = match below.split_once('/') {
                Some((folder, _)) => format!("{folder}/"),
                None => below.to_string(),
            };
            if names.last() != Some(&name) {
                names.push(name);
            }
        }
        (!names.is_empty()).then(|| names.join("\n").into_bytes())
    }
}

/// `imgforge imds-relay ADDR`: copies stdin to a connection to ADDR and the
/// answer to stdout; QEMU runs it for each guest connection to the
/// metadata address.
pub fn relay(addr: &str) -> Result<(), ImdsError> {
    let stream = TcpStream::connect(addr).map_err(|source| ImdsError::Relay {
        addr: addr.to_string(),
        source,
    })?;
    let mut upstream = stream.try_clone().map_err(|source| ImdsError::Relay {
        addr: addr.to_string(),
        source,
    })?;
    let to_server = thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut upstream);
        let _ = upstream.shutdown(Shutdown::Write);
    });
    let mut downstream = stream;
    let mut stdout = std::io::stdout().lock();
    let _ = std::io::copy(&mut downstream, &mut stdout);
    let _ = stdout.flush();
    drop(to_server);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn http(addr: SocketAddr, request: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap();
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    #[test]
    fn answers_only_with_a_token_and_counts_what_it_served() {
        let server = ImdsServer::start(InstanceMetadata {
            instance_id: "i-0123456789abcdef0".into(),
            local_hostname: "ip-10-1-2-3.ec2.internal".into(),
            availability_zone: "eu-west-1a".into(),
            public_key: "ssh-ed25519 AAAA test".into(),
            user_data: Some(b"#!/bin/sh\necho hi\n".to_vec()),
        })
        .unwrap();
        let addr = server.addr();
        let (status, _) = http(
            addr,
            "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(status, 401, "IMDSv1 is refused");
        let (status, _) = http(addr, "PUT /latest/api/token HTTP/1.1\r\n\r\n");
        assert_eq!(status, 400, "a token request needs a TTL");
        let (status, token) = http(
            addr,
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
        );
        assert_eq!(status, 200);
        let get = |path: &str| {
            http(
                addr,
                &format!("GET {path} HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"),
            )
        };
        assert_eq!(
            get("/latest/meta-data/instance-id"),
            (200, "i-0123456789abcdef0".into())
        );
        assert_eq!(get("/latest/meta-data/placement/region").1, "eu-west-1");
        assert_eq!(get("/latest/user-data").1, "#!/bin/sh\necho hi\n");
        assert_eq!(get("/latest/meta-data/nope").0, 404);
        let counts = server.counts();
        assert_eq!(counts.tokens_issued, 1);
        assert_eq!(counts.refused_without_token, 1);
        assert_eq!(counts.user_data_fetches, 1);
        assert_eq!(counts.metadata_answered, 3);
        assert_eq!(counts.not_found, 1);
    }

    #[test]
    fn folders_list_their_entries_under_any_version_as_cloud_init_walks_them() {
        let tree = MetadataTree::of(&InstanceMetadata {
            instance_id: "i-1".into(),
            local_hostname: "ip-10-0-0-1.ec2.internal".into(),
            availability_zone: "eu-west-1a".into(),
            public_key: "ssh-ed25519 AAAA".into(),
            user_data: None,
        });
        let get = |path: &str| {
            version_relative(path)
                .and_then(|p| tree.get(p))
                .map(|v| String::from_utf8(v).unwrap())
        };
        let root = get("/2021-03-23/meta-data/").unwrap();
        assert!(root.lines().any(|l| l == "instance-id"), "{root}");
        assert!(root.lines().any(|l| l == "placement/"), "{root}");
        assert!(root.lines().any(|l| l == "public-keys/"), "{root}");
        assert_eq!(
            get("/2009-04-04/meta-data/instance-id").as_deref(),
            Some("i-1")
        );
        assert_eq!(
            get("/latest/meta-data/public-keys/").as_deref(),
            Some("0=imgforge-boot-test")
        );
        assert_eq!(
            get("/latest/meta-data/public-keys/0/").as_deref(),
            Some("openssh-key")
        );
        assert!(
            get("/latest/dynamic/instance-identity/document")
                .unwrap()
                .contains("\"region\":\"eu-west-1\"")
        );
        assert_eq!(get("/latest/meta-data/nope"), None);
        assert_eq!(get("/not-a-version/meta-data/instance-id"), None);
        assert_eq!(get("/2021-3-23/meta-data/instance-id"), None);
    }
}
