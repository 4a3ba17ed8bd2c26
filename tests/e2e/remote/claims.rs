//! "Never twice": two projects on two cache directories share one remote and build
//! the same target at the same time; each action executes once in total, the other
//! build waits on its claim and uses the result (reported `cached`).

use std::collections::BTreeMap;

use super::s3::S3Server;
use super::{spawn, Nginx};
use crate::support::{wait, Run, TestDir};

/// How many times each instance ran over `runs`.
fn executions(runs: &[&Run]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for run in runs {
        for line in run.lines().iter().filter(|l| l["event"] == "stage") {
            let ran = usize::from(line["status"] == "ran");
            *counts.entry(line["stage"].as_str().unwrap().to_string()).or_insert(0) += ran;
        }
    }
    counts
}

/// Starts `args` in two fresh projects with `env` at once; returns both runs.
fn concurrently(pipeline: &str, args: &[&str], env: &[(&str, String)]) -> (Run, Run) {
    let env: Vec<(&str, &str)> = env.iter().map(|(key, value)| (*key, value.as_str())).collect();
    let (one, two) = (TestDir::with_pipeline(pipeline), TestDir::with_pipeline(pipeline));
    let children = [spawn(&one, args, &env), spawn(&two, args, &env)];
    let [a, b] = children.map(wait);
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_eq!(b.code, 0, "{}", b.stderr);
    assert_eq!(a.hashes(), b.hashes(), "both builds end with the same bytes");
    (a, b)
}

fn assert_each_ran_once(a: &Run, b: &Run) {
    let counts = executions(&[a, b]);
    let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let never: Vec<_> = counts.iter().filter(|(_, n)| **n == 0).collect();
    eprintln!("executions over both builds: {counts:?}");
    assert!(duplicates.is_empty(), "executed more than once: {duplicates:?}\n{}\n{}", a.stderr, b.stderr);
    assert!(never.is_empty(), "never executed: {never:?}");
}

#[test]
fn two_concurrent_tunes_sharing_an_s3_remote_train_each_trial_once() {
    let Some(server) = S3Server::start() else { return };
    let (a, b) = concurrently(crate::tune::TUNE, &["--json", "build", "tune"], &server.env());
    assert_each_ran_once(&a, &b);
    let trials = executions(&[&a, &b]).into_keys().filter(|name| name.starts_with("overfit[")).count();
    assert_eq!(trials, 3, "the three trials were built");
}

#[test]
fn two_concurrent_builds_sharing_a_webdav_remote_execute_each_stage_once() {
    let Some(nginx) = Nginx::start("claims") else {
        eprintln!("skipped: nginx is not installed (scripts/test installs nginx-light)");
        return;
    };
    let env = [("PIPE_REMOTE_CACHE", nginx.url.clone())];
    let (a, b) = concurrently("", &["--json", "build", "inspect", "--jobs", "2"], &env);
    assert_each_ran_once(&a, &b);
}

#[test]
fn a_claim_whose_holder_went_silent_is_taken_over() {
    let Some(server) = S3Server::start() else { return };
    let mut env = server.env();
    // Learn the key of `data` from a build on another prefix of the same bucket.
    let probe = TestDir::with_pipeline("");
    let mut other = env.clone();
    other[0].1 = "s3://team-bucket/elsewhere".to_string();
    let other: Vec<(&str, &str)> = other.iter().map(|(key, value)| (*key, value.as_str())).collect();
    let learned = probe.run_with_env(&["--json", "build", "data"], &other);
    assert_eq!(learned.code, 0, "{}", learned.stderr);
    let key = learned.stage("data")["key"].as_str().expect("stage lines carry the key").to_string();
    // A claimant that crashed: its lease never changes again and is never released.
    let lease = br#"{"owner":"1-dead","stage":"data","beat":3,"released":false}"#;
    let claim = format!("/team-bucket/pipe-cache/claims/{key}.0");
    assert_eq!(server.request("PUT", &claim, lease).0, 200);
    env.push(("PIPE_CLAIM_LEASE_SECS", "1".to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(key, value)| (*key, value.as_str())).collect();
    let dir = TestDir::with_pipeline("");
    let run = dir.run_with_env(&["--json", "build", "data"], &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stage("data")["status"], "ran");
    // It took the next generation, released it when done, and left the dead one alone.
    let (status, taken) = server.request("GET", &format!("/team-bucket/pipe-cache/claims/{key}.1"), b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&taken));
    let taken: serde_json::Value = serde_json::from_slice(&taken).unwrap();
    assert_eq!(taken["released"], true, "{taken}");
    assert_eq!(server.request("GET", &claim, b"").1, lease);
}

#[test]
fn a_remote_without_create_if_absent_warns_once_and_builds() {
    let Some(nginx) = Nginx::with_methods("no-mkcol", "PUT") else {
        eprintln!("skipped: nginx is not installed (scripts/test installs nginx-light)");
        return;
    };
    let dir = TestDir::with_pipeline("");
    let run = dir.run_with_env(&["--json", "build", "inspect"], &[("PIPE_REMOTE_CACHE", &nginx.url)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr.matches("no claims on the remote cache").count(), 1, "{}", run.stderr);
    assert!(!run.stderr.contains("remote cache unavailable"), "the cache itself still works: {}", run.stderr);
    let again = TestDir::with_pipeline("");
    let fetched = again.run_with_env(&["--json", "build", "inspect"], &[("PIPE_REMOTE_CACHE", &nginx.url)]);
    assert_eq!(executions(&[&fetched]).values().sum::<usize>(), 0, "{}", fetched.stdout);
}
