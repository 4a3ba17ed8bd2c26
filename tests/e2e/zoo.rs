//! The model zoo end to end: `model.kind = "auto"` picks the convnet on digits, the
//! checkpoint is the same bytes on 1 and 2 threads, `evaluate` scores the test split
//! and the build ends with the headline; resnet checkpoints carry batch norm buffers.

use std::path::Path;

use crate::support::{Run, TestDir};

/// Small convnet budgets: a cold build in a few seconds.
const CONVNET: &str = r#"
[model]
kind = "auto"

[train]
steps = 150
eval_every = 50

[checks.zero_input_baseline]
steps = 30

[checks.overfit_batch]
max_steps = 300

[checks.overfit]
min_train_acc = 0.5
"#;

fn python_tensors(python: &str, path: &str) -> String {
    let script = r#"
import sys
from safetensors.numpy import load_file
tensors = load_file(sys.argv[1])
for name in sorted(tensors):
    print(name, tuple(tensors[name].shape))
"#;
    let output = std::process::Command::new(python).arg("-c").arg(script).arg(path).output().expect("python runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn checkpoint_path(run: &Run) -> String {
    run.stage("overfit")["artifacts"]["checkpoint.safetensors"]["path"].as_str().unwrap().to_string()
}

#[test]
fn auto_convnet_is_thread_count_independent_and_evaluate_scores_the_test_split() {
    let dir = TestDir::with_pipeline(CONVNET);
    let one = dir.run_with_env(&["build", "--json", "--threads", "1", "--cache-dir", "cache-1"], &[]);
    let two = dir.run_with_env(&["build", "--json", "--threads", "2", "--cache-dir", "cache-2"], &[]);
    assert_eq!(one.code, 0, "{}", one.stderr);
    assert_eq!(two.code, 0, "{}", two.stderr);
    assert_eq!(one.hashes(), two.hashes(), "bitwise-identical artifacts for 1 and 2 threads");
    let names = python_tensors("python3", &checkpoint_path(&one));
    assert_eq!(
        names.trim(),
        "conv1.bias (16,)\nconv1.weight (16, 1, 3, 3)\nconv2.bias (32,)\nconv2.weight (32, 16, 3, 3)\n\
         fc.bias (10,)\nfc.weight (10, 512)"
    );
    let evaluate = one.stage("evaluate");
    assert_eq!(evaluate["metrics"]["n_test"], 360.0);
    let test_acc = evaluate["metrics"]["test_acc"].as_f64().unwrap();
    assert!(test_acc > 0.8, "test accuracy {test_acc}");
    for artifact in ["evaluation.json", "confusion.svg", "worst.png", "headline.txt"] {
        assert!(evaluate["artifacts"][artifact].is_object(), "{artifact}: {evaluate}");
    }
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(evaluate["artifacts"]["evaluation.json"]["path"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(report["model"], "convnet", "auto picked the convnet for image data");
    assert_eq!(report["worst"].as_array().unwrap().len(), 16);
    let svg = std::fs::read_to_string(evaluate["artifacts"]["confusion.svg"]["path"].as_str().unwrap()).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(">9</text>"), "class names label the matrix");

    // People get the headline as the last line; --json keeps stage lines then done.
    let human = dir.run(&["build", "--cache-dir", "cache-1"]);
    let last = human.stdout.lines().last().unwrap_or_default().to_string();
    let expected = format!("overfit: convnet, val acc {:.4}, test acc {test_acc:.4} (360 examples)", {
        one.stage("overfit")["metrics"]["val_acc"].as_f64().unwrap()
    });
    assert_eq!(last, expected, "{}", human.stdout);
    assert!(!one.stdout.contains("overfit: convnet"), "no headline text in --json");

    // The report opens with the same headline.
    let report = dir.run(&["report", "--cache-dir", "cache-1"]);
    assert_eq!(report.code, 0, "{}", report.stderr);
    let page = std::fs::read_to_string(report.stdout.trim()).unwrap();
    let opening = format!("<p class=\"headline\"><strong>{expected}</strong></p>");
    let (headline_at, scorecard_at) = (page.find(&opening), page.find("id=\"scorecard\""));
    assert!(headline_at.is_some() && headline_at < scorecard_at, "{opening} opens the page");
}

#[test]
fn resnet_checkpoint_holds_batch_norm_statistics() {
    // A deeper net on so short a budget learns faster at a higher rate.
    let extra = CONVNET
        .replace("kind = \"auto\"", "kind = \"resnet\"\nwidth = 4")
        .replace("[train]\n", "[train]\nlr = 0.003\n")
        .replace("max_steps = 300", "max_steps = 1000");
    let dir = TestDir::with_pipeline(&extra);
    let run = dir.build(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let names = python_tensors("python3", &checkpoint_path(&run));
    for name in [
        "bn1.running_mean (4,)",
        "bn1.running_var (4,)",
        "layer2.0.shortcut.0.weight (8, 4, 1, 1)",
        "fc.weight (10, 16)",
    ] {
        assert!(names.lines().any(|line| line == name), "{name} in\n{names}");
    }
    assert!(run.stage("grad_deps")["verdicts"][0]["message"].as_str().unwrap().contains("evaluation mode"));
    assert!(run.stage("evaluate")["metrics"]["test_acc"].as_f64().unwrap() > 0.3);
    // PyTorch, when a peer environment has it: the names are torchvision's, so a
    // state dict loads (num_batches_tracked is PyTorch's own counter, not ours).
    let torch = "/tmp/torch-peer/bin/python";
    if Path::new(torch).exists() {
        let script = r#"
import json, struct, sys, torch
data = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", data[:8])
header = json.loads(data[8:8 + n])
state = {}
for name, info in header.items():
    if name == "__metadata__":
        continue
    start, end = info["data_offsets"]
    assert info["dtype"] == "F32"
    state[name] = torch.frombuffer(bytearray(data[8 + n + start:8 + n + end]), dtype=torch.float32).reshape(info["shape"])
bn = torch.nn.BatchNorm2d(4)
prefix = "bn1."
missing, unexpected = bn.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=False)
assert set(missing) <= {"num_batches_tracked"} and not unexpected, (missing, unexpected)
assert (bn.running_var > 0).all()
conv = torch.nn.Conv2d(4, 8, 1, stride=2, bias=False)
conv.load_state_dict({"weight": state["layer2.0.shortcut.0.weight"]})
print(len(state))
"#;
        let output =
            std::process::Command::new(torch).arg("-c").arg(script).arg(checkpoint_path(&run)).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
}
