use super::*;
use crate::ids::knob;

const ALLOWED: &[KnobId] = &[
    knob::TRAIN_LR,
    knob::TRAIN_BATCH_SIZE,
    knob::TRAIN_WEIGHT_DECAY,
    knob::MODEL_HIDDEN,
    knob::MODEL_KIND,
    knob::TRAIN_NESTEROV,
    knob::TRAIN_OPTIMIZER,
];

fn parse(entries: &[&str]) -> Result<Space, SpaceError> {
    let schema = crate::knobs::schema();
    let refused = |id: KnobId| format!("`{id}` is not searched here");
    let current = |id: KnobId| (id == knob::MODEL_HIDDEN).then(|| KnobValue::IntList(vec![128, 128]));
    let searchable = Searchable { schema: &schema, allowed: ALLOWED, refused: &refused, current: &current };
    Space::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>(), &searchable)
}

fn error(entries: &[&str]) -> String {
    parse(entries).unwrap_err().to_string()
}

const SPACE: &[&str] = &[
    "train.lr = log(1e-4, 1e-2)",
    "train.weight_decay = uniform(0, 0.5)",
    "model.hidden = int(16, 64)",
    "train.batch_size = choice(32, 64, 128)",
    "train.optimizer = choice(adam, \"sgd\")",
];

#[test]
fn trial_points_are_stable_for_a_seed_and_space() {
    let space = parse(SPACE).unwrap();
    let points: Vec<_> = (0..20).map(|i| space.point(7, i)).collect();
    // Recomputed (as after raising the trial count), the first points are the same.
    let again = parse(SPACE).unwrap();
    assert_eq!(points, (0..20).map(|i| again.point(7, i)).collect::<Vec<_>>());
    // Pinned values: a change to the sampler changes every tune's trials and keys.
    let first: Vec<String> = points[0].iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(first, PINNED);
    // Another seed gives other points; adding a knob keeps the others' values.
    assert_ne!(points, (0..20).map(|i| space.point(8, i)).collect::<Vec<_>>());
    let wider = parse(&[SPACE, &["train.nesterov = choice(true, false)"]].concat()).unwrap();
    for (i, point) in points.iter().enumerate() {
        assert_eq!(&wider.point(7, i)[..SPACE.len()], &point[..]);
    }
}

const PINNED: [&str; 5] = [
    "train.lr=0.0008811",
    "train.weight_decay=0.12",
    "model.hidden=[64, 64]",
    "train.batch_size=128",
    "train.optimizer=\"sgd\"",
];

#[test]
fn draws_cover_and_respect_each_distribution() {
    let space = parse(SPACE).unwrap();
    let points: Vec<_> = (0..400).map(|i| space.point(1, i)).collect();
    let column = |d: usize| points.iter().map(|p| p[d].1.clone()).collect::<Vec<_>>();
    let lr: Vec<f64> = column(0).iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(lr.iter().all(|&v| (1e-4..=1e-2).contains(&v)));
    // Log-uniform: about half the draws below the geometric midpoint 1e-3.
    let below = lr.iter().filter(|&&v| v < 1e-3).count();
    assert!((160..240).contains(&below), "{below}");
    let hidden = column(2);
    assert!(hidden.iter().all(|v| matches!(v.as_int_list(), Some([a, b]) if a == b && (16..=64).contains(a))));
    assert!(hidden.contains(&KnobValue::IntList(vec![16, 16])) && hidden.contains(&KnobValue::IntList(vec![64, 64])));
    let batch = column(3);
    for option in [32, 64, 128] {
        assert!(batch.iter().filter(|v| **v == KnobValue::Int(option)).count() > 100);
    }
    let middle = space.dims[0].position(&KnobValue::Float(Float(1e-3))).unwrap();
    assert!((middle - 0.5).abs() < 1e-12, "{middle}");
    assert_eq!(space.dims[3].position(&KnobValue::Int(128)), Some(1.0));
    assert_eq!(space.dims[3].coordinate(&KnobValue::Int(64)), Some(1.0));
    assert_eq!(space.dims[2].position(&KnobValue::IntList(vec![40, 40])), Some(0.5));
}

#[test]
fn bad_entries_name_their_index_and_say_why() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["train.lrr = log(1e-4, 1e-2)"],
            "tune.space[0] (`train.lrr = log(1e-4, 1e-2)`): unknown knob `train.lrr`, did you mean `train.lr`?",
        ),
        (&["train.lr = log(1e-4, 1e-2)", "train.lr = uniform(0, 1)"], "tune.space[1]"),
        (&["train.lr = log(1e-4, 1e-2)", "train.lr = uniform(0, 1)"], "already searched by tune.space[0]"),
        (&["train.lr = log(0, 1e-2)"], "log(a, b) needs 0 < a"),
        (&["train.lr = uniform(0, 1000)"], "leaves its range"),
        (&["train.lr = int(1, 3)"], "not an integer"),
        (&["train.batch_size = uniform(8, 64)"], "use int(a, b)"),
        (&["train.lr = log(1e-2, 1e-4)"], "range is empty"),
        (&["train.lr = normal(0, 1)"], "unknown distribution `normal`"),
        (&["train.lr = log(1e-4)"], "takes two numbers"),
        (&["train.lr"], "expected `KNOB = DISTRIBUTION`"),
        (&["train.lr = log(1e-4, x)"], "`x` is not a number"),
        (&["train.optimizer = choice(adam, adamx)"], "adamx"),
        (&["train.optimizer = uniform(0, 1)"], "only choice(...)"),
        (&["train.batch_size = choice(32, 32)"], "twice"),
        (&["train.seed = int(0, 9)"], "`train.seed` is not searched here"),
        (&["train.lr = choice(1e-3, [1)"], "unbalanced"),
    ];
    for (entries, wanted) in cases {
        let message = error(entries);
        assert!(message.contains(wanted), "{entries:?}: {message}");
    }
    assert!(error(&["", "x"]).starts_with("tune.space[0]"));
}

#[test]
fn choices_read_values_as_set_does() {
    let space = parse(&["model.hidden = choice(64, [128, 64])", "train.nesterov = choice(true, false)"]).unwrap();
    assert_eq!(space.dims[0].dist, Dist::Choice(vec![KnobValue::IntList(vec![64]), KnobValue::IntList(vec![128, 64])]));
    assert_eq!(space.dims[1].dist, Dist::Choice(vec![KnobValue::Bool(true), KnobValue::Bool(false)]));
    let log_int = parse(&["train.batch_size = log(16, 256)"]).unwrap();
    let draws: Vec<i64> = (0..200).map(|i| log_int.point(0, i)[0].1.as_i64().unwrap()).collect();
    assert!(draws.iter().all(|b| (16..=256).contains(b)));
    assert!(draws.iter().filter(|&&b| b < 64).count() > 70, "log-uniform favours small batches");
}
