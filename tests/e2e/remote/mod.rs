//! A shared remote cache (issue 12): Debian's nginx with WebDAV PUT serves Bazel's HTTP
//! cache layout (`ac/<key>`, `cas/<hash>`) on 127.0.0.1, started here; `s3.rs` does the
//! same against a real S3-compatible server; `claims.rs` runs concurrent builds
//! sharing one remote and counts executions.

mod claims;
mod s3;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{stage_statuses, Run, TestDir};

/// nginx serving a WebDAV root, stopped on drop.
pub struct Nginx {
    child: Child,
    root: PathBuf,
    pub url: String,
}

impl Nginx {
    /// `None` when nginx is not installed (`scripts/test` installs Debian's nginx-light).
    pub fn start(name: &str) -> Option<Nginx> {
        Nginx::with_methods(name, "PUT MKCOL")
    }

    /// nginx allowing the WebDAV `methods` (`PUT` alone: no create-if-absent).
    pub fn with_methods(name: &str, methods: &str) -> Option<Nginx> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|path| Path::new(path).exists())?;
        let dir = std::env::temp_dir().join(format!("pipe-nginx-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let root = dir.join("www");
        for sub in [&root, &dir.join("tmp")] {
            std::fs::create_dir_all(sub).unwrap();
        }
        // nginx's workers may run as another user: let them write.
        for sub in [&dir, &root, &dir.join("tmp")] {
            std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(sub).unwrap().permissions(), 0o777);
            std::fs::set_permissions(sub, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.display();
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  \
             proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  \
             client_max_body_size 0;\n  server {{\n    listen 127.0.0.1:{port};\n    root {};\n    \
             location / {{ dav_methods {methods}; create_full_put_path on; dav_access user:rw group:rw all:r; }}\n  }}\n}}\n",
            root.display()
        );
        std::fs::write(dir.join("nginx.conf"), config).unwrap();
        let child = Command::new(binary)
            .args(["-c", &dir.join("nginx.conf").display().to_string(), "-p", &d.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {:?}",
                std::fs::read_to_string(dir.join("error.log"))
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Nginx { child, root, url: format!("http://127.0.0.1:{port}/team-cache") })
    }

    fn objects(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(self.root.join("team-cache/cas"))
            .map(|dir| dir.flatten().map(|entry| entry.path()).collect())
            .unwrap_or_default();
        found.sort();
        found
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        if let Some(dir) = self.root.parent() {
            std::fs::remove_dir_all(dir).ok();
        }
    }
}

fn build(dir: &TestDir, url: &str) -> Run {
    dir.run_with_env(&["--json", "build", "inspect"], &[("PIPE_REMOTE_CACHE", url)])
}

/// `pipe -C DIR ARGS...` started in the background with `env`.
pub fn spawn(dir: &TestDir, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pipe"));
    command.args(["-C", dir.path().to_str().unwrap()]).args(args).current_dir(dir.path());
    command.env_remove("PIPE_CACHE_DIR").env_remove("PIPE_THREADS").env_remove("PIPE_LOG");
    command.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.spawn().expect("pipe starts")
}

fn statuses(run: &Run) -> Vec<String> {
    stage_statuses(run).into_iter().map(|(stage, status)| format!("{stage}={status}")).collect()
}

#[test]
fn remote_cache_round_trip_corrupt_object_and_unreachable_remote() {
    let Some(nginx) = Nginx::start("round-trip") else {
        eprintln!("skipped: nginx is not installed (scripts/test installs nginx-light)");
        return;
    };
    // One project builds and uploads: objects first, then the entries.
    let first = TestDir::with_pipeline("");
    let run = build(&first, &nginx.url);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(statuses(&run), ["data=ran", "inspect=ran"]);
    let uploaded = nginx.objects();
    assert!(uploaded.len() >= 3, "{uploaded:?}");
    assert_eq!(std::fs::read_dir(nginx.root.join("team-cache/ac")).unwrap().count(), 2);

    // Another project with an empty local cache: everything comes from the remote,
    // nothing runs, and the bytes are the same.
    let second = TestDir::with_pipeline("");
    let run2 = build(&second, &nginx.url);
    assert_eq!(run2.code, 0, "{}", run2.stderr);
    assert_eq!(statuses(&run2), ["data=cached", "inspect=cached"], "{}", run2.stderr);
    assert_eq!(run2.hashes(), run.hashes());

    // A corrupted remote object is detected and not used: its stage runs locally.
    let dataset = run.stage("data")["artifacts"]["dataset.safetensors"]["hash"].as_str().unwrap().to_string();
    let object = nginx.root.join("team-cache/cas").join(&dataset);
    let mut bytes = std::fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&object, &bytes).unwrap();
    let third = TestDir::with_pipeline("");
    let run3 = build(&third, &nginx.url);
    assert_eq!(run3.code, 0, "{}", run3.stderr);
    assert_eq!(statuses(&run3)[0], "data=ran", "{}", run3.stderr);
    assert!(run3.stderr.contains("remote object is corrupt"), "{}", run3.stderr);
    assert_eq!(run3.hashes(), run.hashes(), "the local re-execution gives the true bytes");
    let local = third.path().join(".pipe/objects").join(&dataset[..2]).join(&dataset);
    assert_eq!(blake3::hash(&std::fs::read(local).unwrap()).to_hex().as_str(), dataset);

    // A remote that is down: one warning, and the build succeeds locally.
    let fourth = TestDir::with_pipeline("");
    let run4 = build(&fourth, "http://127.0.0.1:1/team-cache");
    assert_eq!(run4.code, 0, "{}", run4.stderr);
    assert_eq!(statuses(&run4), ["data=ran", "inspect=ran"]);
    assert_eq!(run4.stderr.matches("remote cache unavailable").count(), 1, "{}", run4.stderr);
}

#[test]
fn remote_cache_url_in_pipe_toml_is_checked_and_never_written_anywhere() {
    let dir = TestDir::with_pipeline("[cache]\nremote = \"ftp://user:secret@example.org/x\"\n");
    let run = dir.run(&["build", "inspect"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("pipe.toml:"), "located: {}", run.stderr);
    assert!(run.stderr.contains("expected http://, https:// or s3://"), "{}", run.stderr);
    assert!(!run.stderr.contains("secret"), "credentials are never echoed: {}", run.stderr);
}

/// Issue 12, item 3: artifacts fetched from a teammate's upload are what this machine
/// computes. One project builds a small convnet with one thread and uploads; another
/// project fetches everything (runs nothing), then `pipe verify` re-executes every
/// stage here with two threads and finds the same bytes. (The CPU is the same on this
/// machine; the instruction-set paths of the kernels are proven equal by
/// pipelines/src/kernels/tests.rs, see ARCHITECTURE.md "Same bytes on every machine".)
#[test]
fn verify_reproduces_artifacts_fetched_from_the_remote() {
    let Some(nginx) = Nginx::start("verify") else {
        eprintln!("skipped: nginx is not installed (scripts/test installs nginx-light)");
        return;
    };
    let config = "\n[model]\nkind = \"convnet\"\nchannels = [4, 8]\n\n[train]\neval_every = 10\n\n\
                  [checks.overfit]\nmin_drop = 0.0\nmin_train_acc = 0.0\n";
    let target = "overfit[train.steps=20]";
    let teammate = TestDir::with_pipeline(config);
    let uploaded = teammate
        .run_with_env(&["--json", "build", target], &[("PIPE_REMOTE_CACHE", &nginx.url), ("PIPE_THREADS", "1")]);
    assert_eq!(uploaded.code, 0, "{}", uploaded.stderr);
    let here = TestDir::with_pipeline(config);
    let env = [("PIPE_REMOTE_CACHE", nginx.url.as_str()), ("PIPE_THREADS", "2")];
    let fetched = here.run_with_env(&["--json", "build", target], &env);
    assert_eq!(fetched.code, 0, "{}", fetched.stderr);
    assert!(statuses(&fetched).iter().all(|status| status.ends_with("=cached")), "{:?}", statuses(&fetched));
    assert_eq!(fetched.hashes(), uploaded.hashes());
    let verify = here.run_with_env(&["verify", "--json", target], &env);
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
    let done = verify.lines().last().cloned().unwrap();
    assert_eq!(done["mismatched"], 0, "{}", verify.stdout);
    assert_eq!(done["artifacts"].as_u64().unwrap() as usize, uploaded.hashes().len(), "{}", verify.stdout);
}
