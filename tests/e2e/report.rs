//! The scorecard (`pipe build`, `pipe show`) and `pipe report`'s HTML page, opened
//! from disk in headless Chromium: every image loads, every check is listed, every
//! link resolves, inserted text is escaped. Chromium is required (CI installs it).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Run, TestDir};

/// A string knob the digits pipeline ignores, holding markup: it must come out as text.
const MARKUP_KNOB: &str = r#"
[data.csv]
label = "<script>alert(1)</script>"
header = true
"#;

/// `(stage, check, status)` of every verdict in a `--json` build.
fn verdicts(run: &Run) -> Vec<(String, String, String)> {
    let mut all = Vec::new();
    for line in run.lines().iter().filter(|line| line["event"] == "stage") {
        for verdict in line["verdicts"].as_array().unwrap() {
            all.push((
                line["stage"].as_str().unwrap().to_string(),
                verdict["check"].as_str().unwrap().to_string(),
                verdict["status"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(!all.is_empty(), "the build judged nothing:\n{}", run.stdout);
    all
}

/// `(stage, name, hash)` of every artifact in a `--json` build.
fn artifacts(run: &Run) -> Vec<(String, String, String)> {
    let mut all = Vec::new();
    for line in run.lines().iter().filter(|line| line["event"] == "stage") {
        for (name, artifact) in line["artifacts"].as_object().unwrap() {
            all.push((
                line["stage"].as_str().unwrap().to_string(),
                name.clone(),
                artifact["hash"].as_str().unwrap().to_string(),
            ));
        }
    }
    all
}

fn chromium() -> PathBuf {
    let candidates = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(PathBuf::from));
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("headless Chromium is required: `apt-get install -y chromium` (or set CHROMIUM=/path/to/chromium)");
}

/// The DOM of `page` after its `load` event, as headless Chromium serialises it.
fn dump_dom(page: &Path, scratch: &Path) -> String {
    let profile = scratch.join("chromium-profile");
    std::fs::create_dir_all(&profile).unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    // Read on a thread: the DOM (with inlined images) is larger than a pipe's buffer.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = reader.join().unwrap().unwrap();
    assert!(status.success(), "chromium exited with {status}");
    assert!(dom.contains("</html>"), "chromium printed no DOM:\n{dom}");
    dom
}

/// Values of attribute `name` (`href="..."`) in serialised HTML, unescaped enough for paths.
fn attribute_values<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let needle = format!(" {name}=\"");
    html.match_indices(&needle)
        .map(|(at, _)| {
            let rest = &html[at + needle.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}

/// A URL path segment as the report writes it: unreserved bytes kept, others `%XX`.
fn percent_encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn percent_decode(href: &str) -> String {
    let bytes = href.as_bytes();
    let mut decoded = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' && at + 2 < bytes.len() {
            decoded.push(u8::from_str_radix(&href[at + 1..at + 3], 16).unwrap());
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(decoded).unwrap()
}

#[test]
fn report_opens_offline_in_chromium_with_every_image_check_and_link() {
    let dir = TestDir::with_pipeline(&format!("{}{MARKUP_KNOB}", crate::SMALL));

    // It builds nothing: before a build it says what to run.
    let early = dir.run(&["report"]);
    assert_eq!(early.code, 1, "{}", early.stderr);
    assert!(
        early.stderr.contains("is not built") && early.stderr.contains("run `pipe build overfit`"),
        "{}",
        early.stderr
    );
    assert!(!dir.path().join(".pipe/report/index.html").exists());

    let build = dir.build(&[]);
    assert_eq!(build.code, 0, "{}", build.stderr);
    let report = dir.run(&["report"]);
    assert_eq!(report.code, 0, "{}", report.stderr);
    let page = PathBuf::from(report.stdout.trim());
    assert_eq!(report.stdout.lines().count(), 1, "stdout is the page's path: {}", report.stdout);
    assert!(page.ends_with(".pipe/report/index.html") && page.is_file(), "{}", page.display());
    let html = std::fs::read_to_string(&page).unwrap();
    let again = dir.run(&["report"]);
    assert_eq!(again.code, 0);
    assert_eq!(html, std::fs::read_to_string(&page).unwrap(), "the same build gives the same page");
    let status = dir.run(&["status", "overfit"]);
    assert!(!status.stdout.contains("stale"), "report built or changed nothing:\n{}", status.stdout);

    let dom = dump_dom(&page, dir.path());

    // Every image artifact is on the page, and every <img> loaded (naturalWidth > 0).
    let images =
        artifacts(&build).iter().filter(|(_, name, _)| name.ends_with(".png") || name.ends_with(".svg")).count();
    assert!(images >= 7, "the digits build has plots and pictures ({images})");
    let body = dom.find("<body").map_or("no <body>", |at| &dom[at..dom.len().min(at + 200)]);
    assert!(dom.contains(&format!("data-images-loaded=\"{images}/{images}\"")), "{images} images: {body}");
    // Offline: nothing is fetched from anywhere but the page itself.
    for source in attribute_values(&dom, "src") {
        assert!(source.starts_with("data:"), "an external resource: {}", &source[..source.len().min(80)]);
    }

    // The scorecard lists each check of the build, with its status.
    let checks = verdicts(&build);
    for (stage, check, status) in &checks {
        let row = format!("data-stage=\"{stage}\" data-check=\"{check}\" data-status=\"{status}\"");
        assert!(dom.contains(&row), "scorecard lacks {row}");
    }
    assert_eq!(dom.matches("<tr class=\"check ").count(), checks.len(), "one row per check");

    // Every artifact is linked, and every link resolves from disk to the very bytes.
    let report_dir = page.parent().unwrap();
    for (stage, name, hash) in artifacts(&build) {
        let href = format!("../out/{}/{}", percent_encode(&stage), percent_encode(&name));
        assert!(dom.contains(&format!("href=\"{href}\"")), "no link to {href}");
        let path = report_dir.join(format!("../out/{stage}/{name}"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(blake3::hash(&bytes).to_hex().as_str(), hash, "{href}");
    }
    for href in attribute_values(&dom, "href").into_iter().filter(|href| !href.starts_with('#')) {
        assert!(report_dir.join(percent_decode(href)).is_file(), "broken link {href}");
    }

    // The config: every knob, the ones not at their default marked.
    for spec in pipelines::knobs::schema() {
        assert!(dom.contains(&format!("data-knob=\"{}\"", spec.name)), "config lacks {}", spec.name);
    }
    for changed in ["train.steps", "checks.overfit.min_train_acc", "data.csv.label"] {
        assert!(dom.contains(&format!("<tr class=\"knob changed\" data-knob=\"{changed}\">")), "{changed} not marked");
    }
    assert!(dom.contains("<tr class=\"knob\" data-knob=\"train.lr\">"), "train.lr is at its default");

    // Markup in a knob is text, not a script: the page's only script is its own.
    assert!(dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_eq!(dom.matches("<script").count(), 1, "an injected script");
}

#[test]
fn scorecard_ends_build_and_show_and_a_failing_check_says_what_to_try() {
    let dir = crate::digits();
    let json = dir.build(&[]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let lines = json.lines();
    assert!(lines[..lines.len() - 1].iter().all(|line| line["event"] == "stage"), "--json adds no scorecard line");
    let n_stages = lines.len() - 1;
    // A threshold makes loss_at_init fail without retraining anything.
    let strict = ["--set", "checks.loss_at_init.tolerance=0"];
    let checks: Vec<(String, String, String)> = verdicts(&json)
        .into_iter()
        .map(|(stage, check, status)| {
            let status = if check == "loss_at_init" { "fail".to_string() } else { status };
            (stage, check, status)
        })
        .collect();
    let count = |status: &str| checks.iter().filter(|(_, _, s)| s == status).count();
    assert_eq!(count("fail"), 1, "{checks:?}");
    let human = dir.run(&[&["build", "--keep-going"], &strict[..]].concat());
    assert_eq!(human.code, 1, "{}", human.stderr);
    let out: Vec<&str> = human.stdout.lines().collect();
    let header = out.iter().position(|line| line.starts_with("scorecard: ")).expect("a scorecard");
    assert_eq!(header, n_stages, "after the stage lines:\n{}", human.stdout);
    assert_eq!(
        out[header],
        format!("scorecard: {} checks: {} pass, {} warn, 1 fail", checks.len(), count("pass"), count("warn")),
        "{}",
        human.stdout
    );
    let summary = format!("0 ran, {n_stages} cached, 0 failed; 1 check(s) failed");
    // The summary, then the evaluate stage's headline as the very last line.
    assert!(out[out.len() - 2].starts_with(&summary), "{}", human.stdout);
    assert!(out[out.len() - 1].starts_with("overfit: mlp, val acc "), "{}", human.stdout);
    let block = &out[header + 1..out.len() - 2];
    for (stage, check, status) in &checks {
        let word = if status == "fail" { "FAIL" } else { status.as_str() };
        let found = block.iter().any(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.len() > 3 && words[0] == word && words[1] == stage && words[2] == check
        });
        assert!(found, "no `{word} {stage} {check}` line:\n{}", human.stdout);
    }
    let failing = block.iter().position(|line| line.trim_start().starts_with("FAIL")).unwrap();
    // The verdict's sentence, with what was measured against what.
    assert!(
        block[failing].contains("loss at init 2.30") && block[failing].contains("expected the label entropy 2.30"),
        "{}",
        block[failing]
    );
    assert!(block[failing + 1].trim_start().starts_with("try: initialise the last layer"), "{}", human.stdout);
    let tries = block.iter().filter(|line| line.trim_start().starts_with("try: ")).count();
    assert_eq!(tries, checks.len() - count("pass"), "a `try:` line under each warning and failure");
    assert_eq!(block.len(), checks.len() + tries, "one line per check:\n{}", human.stdout);

    // `pipe show` ends with the scorecard of the stage and the stages it was built from.
    let show = dir.run(&["show", "overfit"]);
    assert_eq!(show.code, 0, "{}", show.stderr);
    let scorecard = show.stdout.split("scorecard: ").nth(1).expect("show prints a scorecard");
    for check in ["loss_decreased", "min_train_acc"] {
        assert!(scorecard.lines().any(|line| line.contains(" overfit ") && line.contains(check)), "{}", show.stdout);
    }

    // The report shows the failure and what to try, and exits 1 like `pipe show`.
    let report = dir.run(&[&["report"], &strict[..]].concat());
    assert_eq!(report.code, 1, "{}", report.stderr);
    assert!(report.stderr.contains("loss_at_init"), "{}", report.stderr);
    let html = std::fs::read_to_string(report.stdout.trim()).unwrap();
    assert!(html.contains("data-stage=\"loss_at_init\" data-check=\"loss_at_init\" data-status=\"fail\""));
    assert!(html.contains("initialise the last layer to predict the class priors"));
    assert!(html.contains("<tr class=\"knob changed\" data-knob=\"checks.loss_at_init.tolerance\">"));
    assert!(html.contains("<td>--set</td>"));
}
