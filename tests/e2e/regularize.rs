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
