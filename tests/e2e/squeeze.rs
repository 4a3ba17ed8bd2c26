//! The `squeeze` stage: an ensemble of seeds as fan-in members, each an ordinary
//! cached `overfit` instance, and a distilled student.

use crate::support::{stage_statuses, Run, TestDir};

/// Short runs that pass the overfit checks, and no saved states (every member that
/// runs trains from scratch).
const SQUEEZE: &str = r#"
[train]
steps = 80
eval_every = 40

[checks.overfit]
min_drop = 0.0
min_train_acc = 0.0
"#;

const NO_STATES: (&str, &str) = ("PIPE_CHECKPOINT_EVERY", "0");

fn build(dir: &TestDir, instance: &str) -> Run {
    let run = dir.run_with_env(&["build", "--json", instance], &[NO_STATES]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    run
}

fn statuses(run: &Run) -> Vec<(String, String)> {
    stage_statuses(run).into_iter().filter(|(name, _)| name != "data").collect()
}

/// The `overfit` instances with overrides that ran.
fn trained_trials(run: &Run) -> Vec<String> {
    statuses(run)
        .into_iter()
        .filter(|(name, status)| name.starts_with("overfit[") && status == "ran")
        .map(|(name, _)| name)
        .collect()
}

/// A small MLP trained briefly, with the overfit checks relaxed: the members of the
/// tune and regularize tests.
const SMALL_MLP: &str = r#"
[model]
kind = "mlp"
hidden = [16]

[train]
steps = 40
eval_every = 20

[checks.overfit]
min_drop = 0.0
min_train_acc = 0.0
"#;

fn pair(name: &str, status: &str) -> (String, String) {
    (name.to_string(), status.to_string())
}

#[test]
fn a_new_or_changed_member_retrains_only_that_member() {
    let dir = TestDir::with_pipeline(SQUEEZE);
    let first = build(&dir, "squeeze[squeeze.k=2]");
    assert_eq!(
        statuses(&first),
        [pair("overfit", "ran"), pair("overfit[train.seed=1]", "ran"), pair("squeeze[squeeze.k=2]", "ran")]
    );
    let squeeze = first.stage("squeeze[squeeze.k=2]");
    for metric in ["best_member_val_acc", "ensemble_val_acc", "val_acc", "kept_share"] {
        assert!(squeeze["metrics"][metric].is_f64(), "{metric}: {squeeze}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".pipe/out/squeeze[squeeze.k=2]/squeeze.json")).unwrap())
            .unwrap();
    let members: Vec<&str> =
        report["members"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(members, ["overfit", "overfit[train.seed=1]"]);

    // A third member: only it trains.
    let grown = build(&dir, "squeeze[squeeze.k=3]");
    assert_eq!(
        statuses(&grown),
        [
            pair("overfit", "cached"),
            pair("overfit[train.seed=1]", "cached"),
            pair("overfit[train.seed=2]", "ran"),
            pair("squeeze[squeeze.k=3]", "ran"),
        ]
    );

    // One member's checkpoint lost: only that member retrains, to the same bytes, so
    // the ensemble is still cached (early cutoff).
    let hash = grown.stage("overfit[train.seed=1]")["artifacts"]["checkpoint.safetensors"]["hash"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(dir.path().join(".pipe/objects").join(&hash[..2]).join(&hash)).unwrap();
    let repaired = build(&dir, "squeeze[squeeze.k=3]");
    assert_eq!(
        statuses(&repaired),
        [
            pair("overfit", "cached"),
            pair("overfit[train.seed=1]", "ran"),
            pair("overfit[train.seed=2]", "cached"),
            pair("squeeze[squeeze.k=3]", "cached"),
        ]
    );
    assert_eq!(repaired.hashes(), grown.hashes());
}

/// `squeeze.members = "tune"`: the k best trials of a small digits tune, ranked as
/// `tune` ranks them, shared with the tune's own trials; more trials train only the
/// new one.
#[test]
fn members_from_tune_are_its_best_trials() {
    let config = format!(
        r#"{SMALL_MLP}
[tune]
trials = 3
space = ["train.lr = log(1e-3, 3e-2)"]

[squeeze]
k = 2
members = "tune"
"#
    );
    let dir = TestDir::with_pipeline(&config);
    let first = build(&dir, "squeeze");
    let trained = trained_trials(&first);
    assert_eq!(trained.len(), 3, "every trial trains: {trained:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".pipe/out/squeeze/squeeze.json")).unwrap()).unwrap();
    assert_eq!(report["source"], "tune");
    let members: Vec<(String, f64, f64)> = report["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (m["name"].as_str().unwrap().to_string(), m["val_acc"].as_f64().unwrap(), m["val_loss"].as_f64().unwrap())
        })
        .collect();
    // The two best trials by validation accuracy (then loss), best first.
    let mut ranked: Vec<(String, f64, f64)> = trained
        .iter()
        .map(|name| {
            let metrics = &first.stage(name)["metrics"];
            (name.clone(), metrics["val_acc"].as_f64().unwrap(), metrics["val_loss"].as_f64().unwrap())
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.total_cmp(&b.2)));
    let names = |list: &[(String, f64, f64)]| list.iter().map(|m| m.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&members), names(&ranked[..2]), "{report}");

    // The tune's trials are the same instances: nothing trains again.
    let tune = build(&dir, "tune");
    let trials = statuses(&tune);
    assert!(
        trials.iter().filter(|(name, _)| name.starts_with("overfit")).all(|(_, status)| status == "cached"),
        "{trials:?}"
    );

    // A fourth trial: only it trains.
    let grown = dir.run_with_env(&["build", "--json", "--set", "tune.trials=4", "squeeze"], &[NO_STATES]);
    assert_eq!(grown.code, 0, "{}", grown.stderr);
    let ran = trained_trials(&grown);
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert!(!trained.contains(&ran[0]));
}

/// `squeeze.members = "regularize"`: the ladder's rungs train (shared with
/// `regularize`'s own), then the best rung by validation loss is member 0 as it is and
/// member 1 is that rung under the next seed.
#[test]
fn members_from_regularize_are_seeds_of_its_best_rung() {
    let config = format!(
        r#"{SMALL_MLP}
[regularize]
rungs = ["train.lr=0.01", "model.hidden=[32]"]

[squeeze]
k = 2
members = "regularize"
"#
    );
    let dir = TestDir::with_pipeline(&config);
    let first = build(&dir, "squeeze");
    let trained = trained_trials(&first);
    assert_eq!(trained.len(), 4, "three rungs and one more seed: {trained:?}");
    let rungs: Vec<&String> = trained.iter().filter(|name| !name.contains("train.seed")).collect();
    assert_eq!(rungs.len(), 3, "{trained:?}");
    let val_loss = |name: &str| first.stage(name)["metrics"]["val_loss"].as_f64().unwrap();
    let best = rungs.iter().copied().min_by(|a, b| val_loss(a).total_cmp(&val_loss(b))).unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".pipe/out/squeeze/squeeze.json")).unwrap()).unwrap();
    assert_eq!(report["source"], "regularize");
    let members: Vec<&str> =
        report["members"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    let reseeded = format!("{},train.seed=1]", best.trim_end_matches(']'));
    assert_eq!(members, [best.as_str(), reseeded.as_str()], "{report}");

    // The ladder is the same instances: `regularize` trains nothing and picks the
    // same rung.
    let ladder = build(&dir, "regularize");
    let again = statuses(&ladder);
    assert!(
        again.iter().filter(|(name, _)| name.starts_with("overfit[")).all(|(_, status)| status == "cached"),
        "{again:?}"
    );
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".pipe/out/regularize/ladder.json")).unwrap()).unwrap();
    let best_rung = ladder.stage("regularize")["metrics"]["best_rung"].as_f64().unwrap() as usize;
    assert_eq!(table["rungs"][best_rung]["instance"], best.as_str(), "{table}");
}

/// `squeeze.tta = "hflip"` re-scores the same members (cached) through their mirror
/// images too, and `squeeze.combine = "geomean"` pools them another way; each says
/// so in `squeeze.json`.
#[test]
fn test_time_flips_and_pooling_rescore_cached_members() {
    let dir = TestDir::with_pipeline(SQUEEZE);
    build(&dir, "squeeze[squeeze.k=2]");
    let flipped =
        dir.run_with_env(&["build", "--json", "--set", "squeeze.tta=\"hflip\"", "squeeze[squeeze.k=2]"], &[NO_STATES]);
    assert_eq!(flipped.code, 0, "{}\n{}", flipped.stdout, flipped.stderr);
    assert_eq!(
        statuses(&flipped),
        [pair("overfit", "cached"), pair("overfit[train.seed=1]", "cached"), pair("squeeze[squeeze.k=2]", "ran")]
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".pipe/out/squeeze[squeeze.k=2]/squeeze.json")).unwrap())
            .unwrap();
    assert_eq!(report["tta"], "hflip", "{report}");
    assert_eq!(report["ensemble"]["combine"], "mean", "{report}");
    assert!(report["ensemble"]["val_acc"].is_f64(), "{report}");
    let pooled = dir.run_with_env(
        &[
            "build",
            "--json",
            "--set",
            "squeeze.tta=\"hflip\"",
            "--set",
            "squeeze.combine=\"geomean\"",
            "squeeze[squeeze.k=2]",
        ],
        &[NO_STATES],
    );
    assert_eq!(pooled.code, 0, "{}\n{}", pooled.stdout, pooled.stderr);
    assert_eq!(
        statuses(&pooled),
        [pair("overfit", "cached"), pair("overfit[train.seed=1]", "cached"), pair("squeeze[squeeze.k=2]", "ran")]
    );
    let geo: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".pipe/out/squeeze[squeeze.k=2]/squeeze.json")).unwrap())
            .unwrap();
    assert_eq!(geo["ensemble"]["combine"], "geomean", "{geo}");
    let checkpoints = |report: &serde_json::Value| -> Vec<serde_json::Value> {
        report["members"].as_array().unwrap().iter().map(|m| m["checkpoint"].clone()).collect()
    };
    assert_eq!(checkpoints(&geo), checkpoints(&report), "the same members, pooled another way");
}
