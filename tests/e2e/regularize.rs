//! Regularization end to end on the digits MLP with tiny budgets: `model.init_from`
//! (a wrong shape exits 2 naming the tensor; the project's own checkpoint as a start).

use crate::support::TestDir;

/// Budgets for a cold `overfit` build of a few seconds.
const TINY: &str = r#"
[model]
kind = "mlp"
hidden = [16]

[train]
lr = 0.003
steps = 100
eval_every = 25

[checks.zero_input_baseline]
steps = 20
margin = 0.0

[checks.overfit_batch]
max_steps = 300
target_loss = 0.5

[checks.overfit]
min_train_acc = 0.0
min_drop = 0.0
"#;

#[test]
fn init_from_with_a_wrong_shape_exits_2_naming_the_tensor() {
    let dir = TestDir::with_pipeline(TINY);
    let fresh = dir.build(&["overfit"]);
    assert_eq!(fresh.code, 0, "{}", fresh.stderr);
    let checkpoint = ".pipe/out/overfit/checkpoint.safetensors";
    let wider =
        dir.build(&["overfit", "--set", "model.hidden=[32]", "--set", &format!("model.init_from={checkpoint}")]);
    assert_eq!(wider.code, 2, "{}\n{}", wider.stdout, wider.stderr);
    let said = format!("{}{}", wider.stdout, wider.stderr);
    assert!(said.contains("`fc1.weight` has shape [16, 64]") && said.contains("[32, 64]"), "{said}");

    // The same shapes: training starts from the checkpoint (the project itself names it).
    let first_loss = |run: &crate::support::Run| run.stage("overfit")["metrics"]["first_train_loss"].as_f64().unwrap();
    let resumed = dir.build(&["overfit", "--set", "model.init_from=."]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(first_loss(&resumed) < first_loss(&fresh) - 0.1, "{} vs {}", first_loss(&resumed), first_loss(&fresh));
    let missing = dir.build(&["overfit", "--set", "model.init_from=nowhere.safetensors"]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(missing.stderr.contains("nowhere.safetensors"), "{}", missing.stderr);
}

/// The stage lines of a build that ran (not cached), by instance name.
fn ran(run: &crate::support::Run) -> Vec<String> {
    let lines = run.lines();
    let ran = lines.iter().filter(|l| l["event"] == "stage" && l["status"] == "ran");
    let mut names: Vec<String> = ran.map(|l| l["stage"].as_str().unwrap_or_default().to_string()).collect();
    names.sort();
    names
}

#[test]
fn a_rung_added_to_the_ladder_runs_alone() {
    let dir = TestDir::with_pipeline(&format!("{TINY}\n[regularize]\nrungs = [\"model.dropout=0.1\"]\n"));
    let first = dir.build(&["regularize"]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let ladder = first.stage("regularize");
    assert_eq!(ladder["metrics"]["rungs"], 2.0);
    // The best rung's checkpoint, the very bytes, for `evaluate`.
    let best = ladder["metrics"]["best_rung"].as_f64().unwrap() as usize;
    let rungs = ["overfit[train.early_stopping=true]", "overfit[model.dropout=0.1,train.early_stopping=true]"];
    let best_rung = first.stage(rungs[best]);
    assert_eq!(
        ladder["artifacts"]["checkpoint.safetensors"]["hash"], best_rung["artifacts"]["checkpoint.safetensors"]["hash"],
        "the ladder's checkpoint is its best rung's"
    );
    assert_eq!(ladder["metrics"]["val_acc"], best_rung["metrics"]["val_acc"]);

    let longer = "\"model.dropout=0.1\", \"train.weight_decay=0.01,train.optimizer=\\\"adamw\\\"\"";
    std::fs::write(
        dir.path().join("pipe.toml"),
        std::fs::read_to_string(dir.path().join("pipe.toml"))
            .unwrap()
            .replace("rungs = [\"model.dropout=0.1\"]", &format!("rungs = [{longer}]")),
    )
    .unwrap();
    let second = dir.build(&["regularize"]);
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    assert_eq!(
        ran(&second),
        [
            "evaluate[evaluate.model=\"regularize\"]",
            "overfit[model.dropout=0.1,train.early_stopping=true,train.optimizer=\"adamw\",train.weight_decay=0.01]",
            "regularize"
        ],
        "only the new rung trains (and the ladder and the score of its best rung read it)"
    );
    let table = std::fs::read_to_string(dir.path().join(".pipe/out/regularize/ladder.json")).unwrap();
    let table: serde_json::Value = serde_json::from_str(&table).unwrap();
    assert_eq!(table["rungs"].as_array().unwrap().len(), 3);
    assert_eq!(table["rungs"][2]["change"], "train.weight_decay=0.01,train.optimizer=\"adamw\"");

    let typo = dir.build(&["regularize", "--set", "regularize.rungs=[\"augment\", \"model.dropuot=0.2\"]"]);
    assert_eq!(typo.code, 2, "{}\n{}", typo.stdout, typo.stderr);
    assert!(
        typo.stderr.contains("regularize.rungs[1]") && typo.stderr.contains("did you mean `model.dropout`?"),
        "{}",
        typo.stderr
    );
}
