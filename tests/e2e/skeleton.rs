//! The rest of the skeleton: dumb and human baselines, the gradient dependency
//! check, non-finite training, prediction dynamics and the plots.

use serde_json::Value;

use crate::support::TestDir;

const SMALL: &str = "[train]\nsteps = 400\neval_every = 100\n\n[checks.zero_input_baseline]\nsteps = 50\n\n[checks.overfit_batch]\nmax_steps = 800\n\n[checks.overfit]\nmin_train_acc = 0.5\n";

fn verdict(run: &crate::support::Run, stage: &str, check: &str) -> Value {
    run.stage(stage)["verdicts"].as_array().unwrap().iter().find(|v| v["check"] == check).cloned().unwrap()
}

#[test]
fn clean_digits_pass_every_skeleton_check_and_write_the_plots() {
    // The default budget: the MLP must beat softmax regression too.
    let dir = TestDir::with_pipeline("[train]\neval_every = 750\n");
    let run = dir.build(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(verdict(&run, "grad_deps", "batch_independence")["status"], "pass");
    assert_eq!(verdict(&run, "beats_baselines", "beats_majority")["status"], "pass");
    assert_eq!(verdict(&run, "beats_baselines", "beats_linear")["status"], "pass");
    assert_eq!(run.stage("human_baseline")["metrics"]["provided"], 0.0);
    assert!(run.stage("human_baseline")["verdicts"].as_array().unwrap().is_empty());
    let overfit = run.stage("overfit");
    for name in
        ["curves.svg", "layers.svg", "dynamics.svg", "dynamics.json", "first_layer.png", "layers.json", "lr.svg"]
    {
        let path = overfit["artifacts"][name]["path"].as_str().unwrap_or_else(|| panic!("{name} missing"));
        let bytes = std::fs::read(path).unwrap();
        if name.ends_with(".svg") {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.starts_with("<svg") && text.ends_with("</svg>") && text.contains("<polyline"), "{name}");
        } else if name.ends_with(".png") {
            assert!(image::load_from_memory(&bytes).unwrap().width() > 8);
        }
    }
    let dynamics: Value = serde_json::from_slice(
        &std::fs::read(overfit["artifacts"]["dynamics.json"]["path"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(dynamics["probs"].as_array().unwrap().len(), 16);
    assert_eq!(dynamics["step"], serde_json::json!([0, 750, 1500, 2250, 3000]));
    assert_eq!(dynamics["probs"][0].as_array().unwrap().len(), 5, "one distribution per evaluation");
    // The learning rate of every step, constant by default.
    let metrics: Value =
        serde_json::from_slice(&std::fs::read(overfit["artifacts"]["metrics.json"]["path"].as_str().unwrap()).unwrap())
            .unwrap();
    let lr = metrics["lr"].as_array().unwrap();
    assert_eq!(lr.len(), 3000);
    assert!(lr.iter().all(|v| v.as_f64() == Some(3e-4)));
    assert_eq!(verdict(&run, "overfit", "lr_schedule")["status"], "pass");
    let grad_deps = run.stage("grad_deps");
    assert_eq!(grad_deps["metrics"]["n_probes"], 4.0);
    assert!(grad_deps["artifacts"]["grad_deps.png"].is_object());
    assert!(run.stage("overfit_batch")["artifacts"]["loss.svg"].is_object());
}

#[test]
fn labels_independent_of_inputs_do_not_beat_the_dumb_baselines() {
    // Features carry no information about the (balanced, pseudo-random) labels.
    let dir = TestDir::with_raw(&format!("[data]\nsource = \"csv:noise.csv\"\n\n{SMALL}"));
    let mut text = String::from("a,b,c,d,label\n");
    let mut state = 7u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    for i in 0..300 {
        text.push_str(&format!("{:.5},{:.5},{:.5},{:.5},{}\n", next(), next(), next(), next(), i % 3));
    }
    std::fs::write(dir.path().join("noise.csv"), text).unwrap();
    // Only the baseline comparison is under test: relax the checks that noise also fails.
    let relaxed = ["--set", "checks.zero_input_baseline.margin=0", "--set", "checks.overfit.min_drop=0"];
    let run = dir.build(&relaxed);
    assert_eq!(run.code, 0, "dumb-baseline verdicts warn by default: {}", run.stderr);
    assert_eq!(verdict(&run, "beats_baselines", "beats_majority")["status"], "warn");
    // As an error when asked to.
    let strict = dir.build(&[&relaxed[..], &["--set", "checks.dumb_baselines.fail=true"]].concat());
    assert_eq!(strict.code, 1);
    assert_eq!(strict.done()["ran"], 0, "a verdict knob retrains nothing");
}

#[test]
fn a_huge_learning_rate_stops_training_naming_step_and_tensor() {
    let dir = TestDir::with_pipeline(SMALL);
    let run = dir.build(&["--keep-going", "--set", "train.optimizer=sgd", "--set", "train.lr=90"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let overfit = run.stage("overfit");
    assert_eq!(overfit["status"], "failed");
    let error = overfit["error"].as_str().unwrap();
    assert!(
        error.contains("step ") && error.contains("became") && error.contains("the first non-finite tensor"),
        "{error}"
    );
    assert!(run.stderr.contains("error[overfit]"), "{}", run.stderr);
    // Never cached as a success: the next build tries again.
    let again = dir.build(&["--keep-going", "--set", "train.optimizer=sgd", "--set", "train.lr=90"]);
    assert_eq!(again.stage("overfit")["status"], "failed");
}

#[test]
fn human_labels_give_an_agreement_baseline_and_malformed_ones_exit_2() {
    let dir = TestDir::with_pipeline(&format!("{SMALL}\n"));
    let first = dir.build(&["data"]);
    let data_path = first.stage("data")["artifacts"]["dataset.safetensors"]["path"].as_str().unwrap().to_string();
    // Relabel val examples 0..20: the first 15 with their true label, 5 wrong.
    let script = r#"
import sys
from safetensors.numpy import load_file
y = load_file(sys.argv[1])["val.y"]
print("split,index,label")
for i in range(20):
    label = int(y[i]) if i < 15 else (int(y[i]) + 1) % 10
    print(f"val,{i},{label}")
"#;
    let output = std::process::Command::new("python3").arg("-c").arg(script).arg(&data_path).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    std::fs::write(dir.path().join("human.csv"), &output.stdout).unwrap();
    let run = dir.build(&["human_baseline", "--set", "data.human_labels=human.csv"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let metrics = &run.stage("human_baseline")["metrics"];
    assert_eq!(metrics["human_acc"], 0.75);
    assert_eq!(metrics["n_human"], 20.0);

    std::fs::write(dir.path().join("human.csv"), "split,index,label\nval,3,7\nval,x,1\n").unwrap();
    let run = dir.build(&["human_baseline", "--set", "data.human_labels=human.csv"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("human.csv: line 3, column 2: `x` is not an example index"), "{}", run.stderr);
}
