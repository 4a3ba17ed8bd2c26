//! `s3://bucket/prefix` against a real S3-compatible server on 127.0.0.1: moto's
//! server (PyPI `moto[server]`, installed by `scripts/test`), which implements S3's
//! conditional `PUT` (`If-None-Match: *`) that claims need. Credentials come only from
//! the environment; the test checks the secret never reaches output or `.pipe`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::statuses;
use crate::support::{Run, TestDir};

/// A secret that must never be written anywhere.
pub const SECRET: &str = "pipe-test-secret-3f9c1e";

/// moto's S3 server, stopped on drop.
pub struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    /// `None` (after a loud message) when moto's server cannot start here.
    pub fn start() -> Option<S3Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let spawned = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = spawned else {
            eprintln!("SKIPPED: python3 is missing, no S3 server (scripts/test installs moto[server])");
            return None;
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                child.kill().ok();
                child.wait().ok();
                eprintln!("SKIPPED: moto's S3 server did not start (scripts/test installs `moto[server]` from PyPI)");
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let server = S3Server { child, port };
        let (status, body) = server.request("PUT", "/team-bucket", b"");
        assert_eq!(status, 200, "creating the bucket: {}", String::from_utf8_lossy(&body));
        Some(server)
    }

    /// What a build needs to use this server: the remote and the `AWS_*` variables.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PIPE_REMOTE_CACHE", "s3://team-bucket/pipe-cache".to_string()),
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ACCESS_KEY_ID", "pipe-test-key".to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    }

    /// A raw request (moto does not check signatures, only that there is one).
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=pipe-test-key/20260101/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=00\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP response");
        let head = String::from_utf8_lossy(&response[..split]).to_string();
        let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
        let mut body = response[split + 4..].to_vec();
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        (status, body)
    }
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&bytes[..end]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&bytes[end + 2..end + 2 + size]);
        bytes = &bytes[end + 4 + size..];
    }
    out
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn build(dir: &TestDir, env: &[(&str, String)]) -> Run {
    let env: Vec<(&str, &str)> = env.iter().map(|(key, value)| (*key, value.as_str())).collect();
    dir.run_with_env(&["--json", "build", "inspect"], &env)
}

/// Every file under `dir`, for checking that no secret was written.
pub fn assert_secret_absent(dir: &std::path::Path, run: &Run) {
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET), "{}\n{}", run.stdout, run.stderr);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().flatten().map(|entry| entry.path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            assert!(!bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()), "secret in {}", path.display());
        }
    }
}

#[test]
fn s3_remote_round_trip_corrupt_object_unreachable_and_no_secret_written() {
    let Some(server) = S3Server::start() else { return };
    let env = server.env();
    let first = TestDir::with_pipeline("");
    let run = build(&first, &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(statuses(&run), ["data=ran", "inspect=ran"]);
    assert_secret_absent(first.path(), &run);

    // A second project with an empty cache fetches everything and runs nothing.
    let second = TestDir::with_pipeline("");
    let run2 = build(&second, &env);
    assert_eq!(run2.code, 0, "{}", run2.stderr);
    assert_eq!(statuses(&run2), ["data=cached", "inspect=cached"], "{}", run2.stderr);
    assert_eq!(run2.hashes(), run.hashes());
    assert_secret_absent(second.path(), &run2);
    // Claims were taken (one per executed action) and the support probe cleaned up.
    let (status, listing) = server.request("GET", "/team-bucket?list-type=2&prefix=pipe-cache/claims/", b"");
    let listing = String::from_utf8_lossy(&listing);
    assert_eq!(status, 200, "{listing}");
    assert_eq!(listing.matches("<Key>").count(), 2, "{listing}");
    assert!(!listing.contains("probe-"), "{listing}");

    // A corrupted remote object is detected, not used, and its stage runs locally.
    let dataset = run.stage("data")["artifacts"]["dataset.safetensors"]["hash"].as_str().unwrap().to_string();
    let path = format!("/team-bucket/pipe-cache/cas/{dataset}");
    let (status, mut bytes) = server.request("GET", &path, b"");
    assert_eq!(status, 200);
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), dataset, "the remote holds the true bytes");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    assert_eq!(server.request("PUT", &path, &bytes).0, 200);
    let third = TestDir::with_pipeline("");
    let run3 = build(&third, &env);
    assert_eq!(run3.code, 0, "{}", run3.stderr);
    assert_eq!(statuses(&run3)[0], "data=ran", "{}", run3.stderr);
    assert!(run3.stderr.contains("remote object is corrupt"), "{}", run3.stderr);
    assert_eq!(run3.hashes(), run.hashes());

    // An endpoint nobody listens on: one warning, a local build.
    let mut down = env.clone();
    down.retain(|(key, _)| *key != "AWS_ENDPOINT_URL");
    down.push(("AWS_ENDPOINT_URL", "http://127.0.0.1:1".to_string()));
    let fourth = TestDir::with_pipeline("");
    let run4 = build(&fourth, &down);
    assert_eq!(run4.code, 0, "{}", run4.stderr);
    assert_eq!(statuses(&run4), ["data=ran", "inspect=ran"]);
    assert_eq!(run4.stderr.matches("remote cache unavailable").count(), 1, "{}", run4.stderr);
    assert!(run4.stderr.contains("s3://team-bucket/pipe-cache"), "{}", run4.stderr);
    assert_secret_absent(fourth.path(), &run4);
}
