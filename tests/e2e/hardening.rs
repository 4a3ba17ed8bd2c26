//! Issue 14 (hardening), end to end through the built binary: bounded input, every
//! loader file in the key, nothing escaping `.pipe`, and the self-healing cache. Each
//! test is named after the item it proves.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Run, TestDir};

/// Runs `pipe -C DIR ARGS...` with at most `limit` of wall time (a hang fails the test
/// instead of the suite) and, when `max_vm_kib` is set, that much virtual memory.
fn run_bounded(dir: &Path, args: &[&str], limit: Duration, max_vm_kib: Option<u64>) -> (Run, Duration) {
    let pipe = env!("CARGO_BIN_EXE_pipe");
    let mut command = Command::new("sh");
    let ulimit = max_vm_kib.map_or(String::new(), |kib| format!("ulimit -v {kib} && "));
    command.arg("-c").arg(format!("{ulimit}exec \"$@\"")).arg("sh").arg(pipe).arg("-C").arg(dir).args(args);
    command.current_dir(dir).env_remove("PIPE_CACHE_DIR").env_remove("PIPE_THREADS").env_remove("PIPE_LOG");
    let started = Instant::now();
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("pipe starts");
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if started.elapsed() > limit {
            child.kill().ok();
            let output = child.wait_with_output().expect("pipe is killed");
            panic!("pipe {args:?} still ran after {limit:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    let run = crate::support::wait(child);
    (run, elapsed)
}

fn no_panic(run: &Run) {
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(run.code == 1 || run.code == 2 || run.code == 0, "exit {}: {}", run.code, run.stderr);
}

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(data);
    bytes
}

/// A small IDX dataset: 40 + 10 images of 6x6, two classes.
fn write_idx(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let image = |i: u32| -> Vec<u8> { (0..36).map(|p| ((p * 7 + i * 13) % 200 + (i % 2) * 50) as u8).collect() };
    for (part, n) in [("train", 40u32), ("t10k", 10)] {
        let pixels: Vec<u8> = (0..n).flat_map(image).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
        std::fs::write(dir.join(format!("{part}-images-idx3-ubyte")), idx_bytes(&[n, 6, 6], &pixels)).unwrap();
        std::fs::write(dir.join(format!("{part}-labels-idx1-ubyte")), idx_bytes(&[n], &labels)).unwrap();
    }
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo runs");
    assert!(status.success());
}

fn status_of(run: &Run, stage: &str) -> String {
    run.stage(stage)["status"].as_str().unwrap_or_default().to_string()
}

#[test]
fn bounded_input_gzip_bomb_idx_stays_under_2gb() {
    let dir = TestDir::with_raw("[data]\nsource = \"idx:bomb\"\n");
    let bomb = dir.path().join("bomb");
    write_idx(&bomb);
    // MNIST's header (60,000 images of 28x28), then 1 GiB of zeros: about 1 MB of gzip.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&idx_bytes(&[60_000, 28, 28], &[])).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        encoder.write_all(&zeros).unwrap();
    }
    let gz = encoder.finish().unwrap();
    assert!(gz.len() < 1_500_000, "{} bytes", gz.len());
    std::fs::remove_file(bomb.join("train-images-idx3-ubyte")).unwrap();
    std::fs::write(bomb.join("train-images-idx3-ubyte.gz"), gz).unwrap();
    // 2 GiB of address space in all: the old loader needed 2.1 GB of resident memory.
    let (run, elapsed) = run_bounded(dir.path(), &["build", "--json", "data"], Duration::from_secs(60), Some(2 << 20));
    no_panic(&run);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("train-images-idx3-ubyte.gz: the IDX header declares"), "{}", run.stderr);
    assert!(run.stderr.contains("gzip trailer"), "{}", run.stderr);
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
}

#[test]
fn bounded_input_fifo_and_devices_are_refused() {
    let dir = TestDir::with_raw("[data]\nsource = \"idx:mnist\"\n");
    let limit = Duration::from_secs(30);
    let (run, _) = run_bounded(dir.path(), &["--pipeline", "/dev/zero", "status"], limit, None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("/dev/zero: not a regular file (a character device)"), "{}", run.stderr);

    let fifo = dir.path().join("fifo.toml");
    mkfifo(&fifo);
    let (run, _) = run_bounded(dir.path(), &["--pipeline", "fifo.toml", "status"], limit, None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("fifo.toml: not a regular file (a FIFO)"), "{}", run.stderr);

    let mnist = dir.path().join("mnist");
    write_idx(&mnist);
    mkfifo(&mnist.join("classes.txt"));
    let (run, _) = run_bounded(dir.path(), &["build", "--json", "data"], limit, None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("classes.txt: not a regular file (a FIFO)"), "{}", run.stderr);
    std::fs::remove_file(mnist.join("classes.txt")).unwrap();

    mkfifo(&dir.path().join("human.csv"));
    let (run, _) =
        run_bounded(dir.path(), &["build", "--json", "--set", "data.human_labels=human.csv", "data"], limit, None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("human.csv: not a regular file (a FIFO)"), "{}", run.stderr);
}

#[test]
fn bounded_input_degenerate_files_exit_2_without_panic() {
    let dir = TestDir::with_raw("[data]\nsource = \"csv:labels.csv\"\n");
    std::fs::write(dir.path().join("labels.csv"), "label\na\nb\na\nb\n").unwrap();
    let run = dir.build(&["data"]);
    no_panic(&run);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("labels.csv: no feature columns"), "{}", run.stderr);

    let dir = TestDir::with_raw("[data]\nsource = \"idx:mnist\"\n");
    let mnist = dir.path().join("mnist");
    write_idx(&mnist);
    std::fs::write(mnist.join("train-images-idx3-ubyte"), idx_bytes(&[40, 6, 0], &[])).unwrap();
    let run = dir.build(&["data"]);
    no_panic(&run);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("train-images-idx3-ubyte: images of 6x0 pixels"), "{}", run.stderr);

    // Too few examples for the split: the data is wrong, not the tool (exit 2).
    let dir = TestDir::with_raw("[data]\nsource = \"csv:tiny.csv\"\n");
    std::fs::write(dir.path().join("tiny.csv"), "a,b,label\n1,2,0\n3,4,1\n").unwrap();
    let run = dir.build(&["data"]);
    no_panic(&run);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("leaves no validation examples (2 examples to split)"), "{}", run.stderr);
}

#[test]
fn bounded_input_degenerate_config_values_are_located_errors() {
    let hidden = format!("[model]\nhidden = [{}]\n", vec!["4"; 20_000].join(", "));
    let cases: [(&str, &str); 6] = [
        ("[train]\nbeta1 = 1.0\n", "pipe.toml:2:9: `train.beta1` expects a number in 0.0..=0.999999, found float 1.0"),
        ("[train]\nbeta2 = 1.0\n", "pipe.toml:2:9: `train.beta2` expects a number in 0.0..=0.999999"),
        ("[train]\neps = 0\n", "pipe.toml:2:7: `train.eps` expects a number in 1e-12..=1.0, found integer 0"),
        (&hidden, "pipe.toml:2:10: `model.hidden` holds an array of 20000 values: at most 64 values"),
        (
            "[data]\nimages.channels = 2\n",
            "pipe.toml:2:19: data.images.channels = 2: images are read as 1 (grayscale) or 3 (RGB)",
        ),
        (
            "[data]\nsplit = [0.8, 0.0, 0.2]\n",
            "pipe.toml:2:9: data.split = [0.8, 0.0, 0.2] leaves no validation examples",
        ),
    ];
    for (text, expected) in cases {
        let dir = TestDir::with_raw(text);
        let run = dir.build(&["data"]);
        no_panic(&run);
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(run.stderr.contains(expected), "want {expected:?} in:\n{}", run.stderr);
    }
}

#[test]
fn bounded_input_huge_unknown_key_answers_instantly() {
    let key = "k".repeat(10 << 20);
    let dir = TestDir::with_raw(&format!("[train]\n{key} = 1\n"));
    let (run, elapsed) = run_bounded(dir.path(), &["status"], Duration::from_secs(30), None);
    assert_eq!(run.code, 2, "{}", &run.stderr[..run.stderr.len().min(300)]);
    assert!(
        run.stderr.contains("pipe.toml:2:") && run.stderr.contains("unknown key train.kkk"),
        "{}",
        &run.stderr[..run.stderr.len().min(300)]
    );
    assert!(run.stderr.len() < 2_000, "the key is not echoed whole: {} bytes", run.stderr.len());
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn loader_files_in_key_classes_txt_and_batches_meta_rerun_data() {
    let dir = TestDir::with_raw("[data]\nsource = \"idx:mnist\"\n");
    let mnist = dir.path().join("mnist");
    write_idx(&mnist);
    let first = dir.build(&["data"]);
    assert_eq!(status_of(&first, "data"), "ran", "{}", first.stderr);
    let key = |run: &Run| run.stage("data")["key"].as_str().unwrap_or_default().to_string();
    let mut keys = vec![key(&first)];
    for (what, text) in [("add", "zero\none\n"), ("edit", "ZERO\nONE\n")] {
        std::fs::write(mnist.join("classes.txt"), text).unwrap();
        let run = dir.build(&["data"]);
        assert_eq!(status_of(&run, "data"), "ran", "{what} classes.txt: {}", run.stderr);
        assert!(!keys.contains(&key(&run)), "{what}: a new key");
        keys.push(key(&run));
        let again = dir.build(&["data"]);
        assert_eq!(status_of(&again, "data"), "cached", "{what}: nothing changed since");
    }
    // Removing it gives back the first build's key (and its cached, numbered classes).
    std::fs::remove_file(mnist.join("classes.txt")).unwrap();
    let run = dir.build(&["data"]);
    assert_eq!(key(&run), keys[0], "remove classes.txt: {}", run.stderr);
    assert_eq!(run.stage("data")["artifacts"], first.stage("data")["artifacts"]);
    let verify = dir.run(&["verify", "data"]);
    assert_eq!(verify.code, 0, "the cached data matches a re-run: {}{}", verify.stdout, verify.stderr);

    // CIFAR-10's batches.meta.txt, the same way.
    let dir = TestDir::with_raw("[data]\nsource = \"cifar10:cifar\"\n");
    let cifar = dir.path().join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"] {
        let mut bytes = Vec::new();
        for r in 0..10u32 {
            bytes.push((r % 10) as u8);
            bytes.extend((0..3072u32).map(|i| ((i * 3 + r * 17) % 256) as u8));
        }
        std::fs::write(cifar.join(format!("{name}.bin")), bytes).unwrap();
    }
    assert_eq!(status_of(&dir.build(&["data"]), "data"), "ran");
    let meta: String = (0..10).map(|i| format!("class{i}\n")).collect();
    std::fs::write(cifar.join("batches.meta.txt"), meta).unwrap();
    let run = dir.build(&["data"]);
    assert_eq!(status_of(&run, "data"), "ran", "adding batches.meta.txt re-runs data: {}", run.stderr);
}

/// Each link the hostile review planted inside `.pipe`, and the command that used it.
#[test]
fn nothing_escapes_pipe_planted_symlinks_are_refused() {
    let dir = TestDir::with_raw("");
    let built = dir.build(&["data"]);
    assert_eq!(built.code, 0, "{}", built.stderr);
    let cache = dir.path().join(".pipe");
    let outside = dir.path().join("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious.txt"), "keep me").unwrap();
    let shard = (0..=255u8).map(|b| format!("{b:02x}")).find(|s| !cache.join("objects").join(s).exists()).unwrap();
    let plants: Vec<(String, PathBuf, Vec<&str>)> = vec![
        ("out".into(), outside.clone(), vec!["build", "--json", "data"]),
        ("quarantine".into(), outside.clone(), vec!["gc"]),
        ("runs/index.jsonl".into(), outside.join("precious.txt"), vec!["build", "--json", "data"]),
        ("lock".into(), outside.join("new-lock"), vec!["build", "--json", "data"]),
        (format!("objects/{shard}"), outside.clone(), vec!["build", "--json", "data"]),
        ("out/diff".into(), outside.clone(), vec!["diff", "--set", "train.lr=0.001"]),
        ("report".into(), outside.clone(), vec!["report", "data"]),
    ];
    for (link, target, args) in plants {
        let path = cache.join(&link);
        let backup = dir.path().join("backup");
        if path.exists() {
            std::fs::rename(&path, &backup).unwrap();
        }
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let run = dir.run(&args);
        assert_ne!(run.code, 0, "{link}: {}", run.stderr);
        let expected = format!("refusing to follow the symlink .pipe/{link} -> {}", target.display());
        assert!(run.stderr.contains(&expected), "{link}: want {expected:?} in\n{}", run.stderr);
        let entries: Vec<_> = std::fs::read_dir(&outside).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(entries, ["precious.txt"], "{link}: nothing written or deleted outside");
        assert_eq!(std::fs::read_to_string(outside.join("precious.txt")).unwrap(), "keep me", "{link}");
        std::fs::remove_file(&path).unwrap();
        if backup.exists() {
            std::fs::rename(&backup, &path).unwrap();
        }
    }
    let again = dir.build(&["data"]);
    assert_eq!((again.code, status_of(&again, "data")), (0, "cached".to_string()), "{}", again.stderr);
}

fn manifest_path(dir: &TestDir, run: &Run, stage: &str) -> PathBuf {
    let key = run.stage(stage)["key"].as_str().unwrap().to_string();
    dir.path().join(".pipe/actions").join(&key[..2]).join(format!("{key}.json"))
}

#[test]
fn self_healing_edited_manifest_reruns_and_fsck_finds_it() {
    let dir = TestDir::with_raw("");
    let first = dir.build(&["data"]);
    let path = manifest_path(&dir, &first, "data");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen("\"n_train\": ", "\"n_train\": 1", 1);
    assert_ne!(edited, text);
    std::fs::write(&path, &edited).unwrap();
    let run = dir.build(&["data"]);
    assert_eq!(status_of(&run, "data"), "ran", "an edited manifest is not served: {}", run.stderr);
    assert_eq!(run.stage("data")["metrics"], first.stage("data")["metrics"]);

    std::fs::write(&path, std::fs::read_to_string(&path).unwrap().replacen("\"n_train\": ", "\"n_train\": 1", 1))
        .unwrap();
    let fsck = dir.run(&["fsck"]);
    assert_eq!(fsck.code, 1, "{}{}", fsck.stdout, fsck.stderr);
    assert!(fsck.stdout.contains("does not match its digest"), "{}", fsck.stdout);
    assert!(!path.exists(), "moved to quarantine");
}

#[test]
fn self_healing_edited_out_copy_is_refreshed() {
    let dir = TestDir::with_raw("");
    let first = dir.build(&["data"]);
    let artifact = &first.stage("data")["artifacts"]["dataset.safetensors"];
    let path = PathBuf::from(artifact["path"].as_str().unwrap());
    let hash = artifact["hash"].as_str().unwrap().to_string();
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&path, &bytes).unwrap();
    let run = dir.build(&["data"]);
    assert_eq!(status_of(&run, "data"), "cached");
    assert_eq!(blake3::hash(&std::fs::read(&path).unwrap()).to_hex().as_str(), hash, "the copy is refreshed");
    let object = dir.path().join(".pipe/objects").join(&hash[..2]).join(&hash);
    assert_eq!(blake3::hash(&std::fs::read(object).unwrap()).to_hex().as_str(), hash, "the store is untouched");
}

#[test]
fn self_healing_dead_process_temps_are_removed() {
    let dir = TestDir::with_raw("");
    dir.build(&["data"]);
    let tmp = dir.path().join(".pipe/tmp");
    // A pid above Linux's pid_max cannot be alive; ours is.
    let dead = tmp.join("4194999-3.tmp");
    let kept = tmp.join("verify-4194999");
    let live = tmp.join(format!("{}-0.tmp", std::process::id()));
    std::fs::write(&dead, vec![0u8; 4096]).unwrap();
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::write(&live, b"a live writer's").unwrap();
    let run = dir.build(&["data"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!dead.exists(), "a dead writer's temp files go when the lock is taken");
    assert!(live.exists(), "a live writer's stay");
    assert!(kept.exists(), "`pipe verify` keeps its re-executed artifacts for inspection");
}

#[test]
fn self_healing_gc_keeps_finished_stages_of_an_interrupted_build() {
    let dir = TestDir::with_raw("");
    assert_eq!(dir.build(&["data"]).code, 0);
    // A build killed before it recorded its run leaves finished entries no run names.
    let interrupted = dir.build(&["inspect"]);
    assert_eq!(status_of(&interrupted, "inspect"), "ran");
    let runs = dir.path().join(".pipe/runs");
    std::fs::remove_file(runs.join("000002.json")).unwrap();
    std::fs::remove_file(runs.join("index.jsonl")).ok();
    let gc = dir.run(&["gc", "--json"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    let report: serde_json::Value = serde_json::from_str(gc.stdout.trim()).unwrap();
    assert_eq!(report["actions"], serde_json::json!([]), "{}", gc.stdout);
    let again = dir.build(&["inspect"]);
    assert_eq!(status_of(&again, "inspect"), "cached", "the finished stage survived gc");
}

/// 20 builds killed with SIGKILL at seeded random moments, then 4 builds at once: the
/// cache stays consistent (fsck clean), no temp file of a dead build survives the next
/// lock, and the bytes are those of an uninterrupted build.
#[test]
fn self_healing_kill_9_soak_and_four_concurrent_builds() {
    let dir = TestDir::with_pipeline(crate::SMALL);
    let reference = dir.run(&["build", "--json", "--cache-dir", "reference"]);
    assert_eq!(reference.code, 0, "{}", reference.stderr);
    let mut state: u64 = 0x9e37_79b9;
    let mut killed = 0;
    for i in 0..20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let delay = Duration::from_millis(30 + state % 700);
        let seed = format!("train.seed={i}");
        let mut child = dir.spawn(&["build", "--json", "--set", &seed]);
        std::thread::sleep(delay);
        if child.try_wait().expect("wait").is_none() {
            killed += 1;
        }
        child.kill().ok();
        child.wait().ok();
    }
    assert!(killed >= 10, "only {killed} of 20 builds were killed mid-way");
    let children: Vec<_> = (0..4).map(|_| dir.spawn(&["build", "--json"])).collect();
    let runs: Vec<Run> = children.into_iter().map(crate::support::wait).collect();
    for run in &runs {
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(run.hashes(), reference.hashes(), "same bytes as an uninterrupted build");
    }
    let ran: i64 = runs.iter().map(|run| run.done()["ran"].as_i64().unwrap_or_default()).sum();
    assert!(ran <= crate::OVERFIT_STAGES, "no stage ran twice: {ran}");
    let fsck = dir.run(&["fsck"]);
    assert_eq!(fsck.code, 0, "{}{}", fsck.stdout, fsck.stderr);
    let leftovers: Vec<_> =
        std::fs::read_dir(dir.path().join(".pipe/tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "temp files of killed builds: {leftovers:?}");
}
