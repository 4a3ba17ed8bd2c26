//! The knob schema of the recipe: every knob, its type, its explicit default and one
//! line of documentation. `examples/digits/pipe.toml` and the README's knob
//! reference show the same defaults (a test keeps them in step).

use workspace::{Float, KnobKind, KnobSpec, KnobValue};

use crate::ids::knob;
use crate::models::{Activation, ModelKind};
use crate::stages::data::Normalize;
use crate::stages::evaluate::ScoredModel;
use crate::stages::regularize::ladder::Select;
use crate::stages::regularize::rungs::DEFAULT_RUNGS;
use crate::stages::squeeze::{Combine, MemberSource, StudentKind, Tta};
use crate::train::{OptimizerName, ScheduleName};

fn float(v: f64) -> KnobValue {
    KnobValue::Float(Float(v))
}

fn int(v: i64) -> KnobValue {
    KnobValue::Int(v)
}

fn text(v: &str) -> KnobValue {
    KnobValue::Str(v.to_string())
}

const BIG: i64 = 1_000_000_000;

pub fn schema() -> Vec<KnobSpec> {
    use KnobKind::*;
    let prob = Float { min: 0.0, max: 1.0 };
    // A decay rate of 1 never forgets (Adam's bias correction divides by zero; SGD
    // momentum never damps): strictly below one.
    let decay = Float { min: 0.0, max: 0.999999 };
    vec![
        KnobSpec::new(
            "data.source",
            Str,
            text("builtin:digits"),
            "builtin:digits (UCI optical digits), idx:DIR, cifar10:DIR, csv:FILE or images:DIR; paths relative to pipe.toml",
        ),
        KnobSpec::new("data.seed", Int { min: 0, max: i64::MAX }, int(0), "seed of the stratified split"),
        KnobSpec::new(
            "data.split",
            FloatList { min: 0.0, max: 1.0 },
            KnobValue::FloatList(vec![Float(0.6), Float(0.2), Float(0.2)]),
            "train/val/test fractions, summing to 1",
        ),
        KnobSpec::choice(
            knob::DATA_NORMALIZE,
            Normalize::Standard,
            "standard: mean/std of the training split, per channel for images, per feature otherwise; feature: per feature for images too; none: raw values",
        ),
        KnobSpec::new("data.csv.label", Str, text("label"), "csv: the label column's header name (or its 0-based index without a header; \"last\")"),
        KnobSpec::new("data.csv.header", Bool, KnobValue::Bool(true), "csv: the first row names the columns"),
        KnobSpec::new(
            "data.images.size",
            IntList { min: 1, max: 1024 },
            KnobValue::IntList(vec![28, 28]),
            "images: every image is resized to [height, width]",
        ),
        KnobSpec::new("data.images.channels", Int { min: 1, max: 3 }, int(1), "images: 1 (grayscale) or 3 (RGB)"),
        KnobSpec::new(
            "data.human_labels",
            Str,
            text(""),
            "CSV of split,index,label from a second annotation (empty: no human baseline)",
        ),
        KnobSpec::choice(
            knob::MODEL_KIND,
            ModelKind::Auto,
            "mlp, linear (softmax regression), convnet, resnet, or auto: convnet for image data, mlp otherwise",
        ),
        KnobSpec::new(
            "model.hidden",
            IntList { min: 1, max: 16_384 },
            KnobValue::IntList(vec![128, 128]),
            "hidden layer widths of the mlp",
        ),
        KnobSpec::choice(knob::MODEL_ACTIVATION, Activation::Relu, "hidden activation"),
        KnobSpec::choice(knob::TRAIN_OPTIMIZER, OptimizerName::Adam, "adam (weight_decay as an L2 penalty in the gradient), adamw (decoupled weight decay) or sgd"),
        KnobSpec::new("train.lr", Float { min: 0.0, max: 100.0 }, float(3e-4), "base learning rate (train.schedule scales it per step)"),
        KnobSpec::new("train.beta1", decay, float(0.9), "adam beta1"),
        KnobSpec::new("train.beta2", decay, float(0.999), "adam beta2"),
        KnobSpec::new("train.eps", Float { min: 1e-12, max: 1.0 }, float(1e-8), "adam epsilon"),
        KnobSpec::new("train.momentum", decay, float(0.0), "sgd momentum (0: plain sgd)"),
        KnobSpec::new("train.weight_decay", Float { min: 0.0, max: 10.0 }, float(0.0), "weight decay: decoupled for adamw and sgd, an L2 penalty for adam"),
        KnobSpec::new("train.batch_size", Int { min: 1, max: 1_000_000 }, int(64), "examples per step"),
        KnobSpec::new("train.steps", Int { min: 1, max: BIG }, int(3000), "optimizer steps of the overfit stage"),
        KnobSpec::new("train.seed", Int { min: 0, max: i64::MAX }, int(0), "seed of init and shuffles"),
        KnobSpec::new("train.eval_every", Int { min: 1, max: BIG }, int(100), "steps between full-split evaluations"),
        KnobSpec::new("checks.inspect.top_k", Int { min: 1, max: 10_000 }, int(16), "inspect: outliers and suspects to list and render"),
        KnobSpec::new("checks.inspect.knn_k", Int { min: 1, max: 100 }, int(10), "inspect: out-of-fold neighbours voting on each training example's label"),
        KnobSpec::new(
            "checks.inspect.knn_queries",
            Int { min: 1, max: BIG },
            int(1_000_000),
            "inspect: training examples audited for label issues (a seeded sample when there are more)",
        ),
        KnobSpec::new("checks.inspect.outlier_z", Float { min: 0.0, max: 1e6 }, float(6.0), "inspect: robust z-score above which an example is an outlier"),
        KnobSpec::new("checks.inspect.max_imbalance", Float { min: 1.0, max: 1e12 }, float(5.0), "inspect: warn when the largest/smallest training class count exceeds this"),
        KnobSpec::new("checks.inspect.max_leaked", Int { min: 0, max: BIG }, int(0), "inspect: fail when more val/test examples than this also occur in another split"),
        KnobSpec::new("checks.inspect.max_duplicates", Int { min: 0, max: BIG }, int(0), "inspect: warn when a split holds more exact duplicates than this"),
        KnobSpec::new("checks.inspect.max_conflicting", Int { min: 0, max: BIG }, int(0), "inspect: fail when more examples than this have an identical twin with another label"),
        KnobSpec::new(
            "checks.inspect.max_near_duplicate_share",
            prob,
            float(0.05),
            "inspect: warn when more than this share of val/test examples nearly duplicate a training example",
        ),
        KnobSpec::new("checks.inspect.max_corrupt", Int { min: 0, max: BIG }, int(0), "inspect: fail when more examples than this hold NaN/Inf or out-of-range values"),
        KnobSpec::new("checks.inspect.max_constant_share", prob, float(0.1), "inspect: warn when more than this share of features is constant on the training split"),
        KnobSpec::new("checks.inspect.max_all_zero", Int { min: 0, max: BIG }, int(0), "inspect: warn when more examples than this are all zeros"),
        KnobSpec::new("checks.inspect.max_outlier_share", prob, float(0.01), "inspect: warn when more than this share of examples are outliers"),
        KnobSpec::new("checks.inspect.max_suspect_share", prob, float(0.05), "inspect: warn when more than this share of checked examples look mislabelled"),
        KnobSpec::new(
            "checks.loss_at_init.tolerance",
            Float { min: 0.0, max: 100.0 },
            float(0.1),
            "pass when |loss at init - label entropy| <= this (nats)",
        ),
        KnobSpec::new(
            "checks.zero_input_baseline.steps",
            Int { min: 1, max: BIG },
            int(300),
            "training budget of each zero-input baseline run",
        ),
        KnobSpec::new(
            "checks.zero_input_baseline.margin",
            Float { min: 0.0, max: 100.0 },
            float(0.2),
            "pass when real-input val loss is lower than zero-input val loss by this (nats)",
        ),
        KnobSpec::new(
            "checks.overfit_batch.size",
            IntList { min: 1, max: 100_000 },
            KnobValue::IntList(vec![2]),
            "sizes of the fixed batches to overfit, e.g. [2, 32]",
        ),
        KnobSpec::new(
            "checks.overfit_batch.target_loss",
            Float { min: 0.0, max: 100.0 },
            float(1e-3),
            "stop overfitting a batch once its loss is below this",
        ),
        KnobSpec::new(
            "checks.overfit_batch.max_steps",
            Int { min: 1, max: BIG },
            int(3000),
            "step cap when overfitting one batch",
        ),
        KnobSpec::new(
            "checks.overfit.min_drop",
            Float { min: 0.0, max: 1.0 },
            float(0.5),
            "pass when training loss fell by at least this fraction from the first evaluation",
        ),
        KnobSpec::new("checks.dumb_baselines.steps", Int { min: 1, max: BIG }, int(500), "training steps of the softmax-regression baseline"),
        KnobSpec::new("checks.dumb_baselines.lr", Float { min: 0.0, max: 100.0 }, float(1e-2), "Adam learning rate of the softmax-regression baseline"),
        KnobSpec::new("checks.dumb_baselines.fail", Bool, KnobValue::Bool(false), "fail (not warn) when the model does not beat a dumb baseline"),
        KnobSpec::new("checks.grad_deps.samples", Int { min: 1, max: 4096 }, int(4), "examples of the first batch probed by the gradient dependency check"),
        KnobSpec::new(
            "checks.batch_preview.max_abs",
            Float { min: 0.0, max: 1e12 },
            float(10.0),
            "batch_preview: warn when a value of the first batch as fed (augmented) is larger than this in magnitude",
        ),
        KnobSpec::new(
            "checks.dynamics.size",
            Int { min: 0, max: 10_000 },
            int(16),
            "validation examples whose predicted probabilities are recorded at each evaluation",
        ),
        KnobSpec::new("checks.overfit.min_train_acc", prob, float(0.99), "pass when final training accuracy >= this"),
        // Optimizers and schedules (issue 9).
        KnobSpec::new("train.nesterov", Bool, KnobValue::Bool(false), "sgd: Nesterov momentum"),
        KnobSpec::choice(
            knob::TRAIN_SCHEDULE,
            ScheduleName::Constant,
            "learning-rate schedule of the overfit stage: constant, step (x step_gamma every step_every steps) or cosine (down to min_lr_ratio)",
        ),
        KnobSpec::new("train.warmup_steps", Int { min: 0, max: BIG }, int(0), "linear warmup steps before the schedule (0: none)"),
        KnobSpec::new("train.step_every", Int { min: 1, max: BIG }, int(1000), "step schedule: steps between decays"),
        KnobSpec::new("train.step_gamma", prob, float(0.1), "step schedule: factor applied at each decay"),
        KnobSpec::new("train.min_lr_ratio", prob, float(0.0), "cosine schedule: final rate as a fraction of train.lr"),
        KnobSpec::new(
            "checks.lr_schedule.min_ratio",
            prob,
            float(0.1),
            "overfit: warn when the schedule takes the rate below this fraction of train.lr ...",
        ),
        KnobSpec::new("checks.lr_schedule.by_fraction", prob, float(0.5), "overfit: ... before this fraction of training"),
        KnobSpec::new("checks.inspect.folds", Int { min: 2, max: 50 }, int(5), "inspect: folds of the out-of-fold neighbour vote behind label issues"),
        KnobSpec::new(
            "checks.inspect.near_duplicate_distance",
            Float { min: 0.0, max: 1e6 },
            float(0.02),
            "inspect: near-duplicates differ by at most this root-mean-square (share of the value range for images, standard deviations otherwise)",
        ),
        KnobSpec::new(
            "checks.inspect.max_self_confidence",
            prob,
            float(0.2),
            "inspect: a label issue's own label has at most this out-of-fold neighbour probability",
        ),
        // The model zoo (convnet, resnet) and the evaluate stage.
        KnobSpec::new(
            "model.channels",
            IntList { min: 1, max: 4096 },
            KnobValue::IntList(vec![16, 32]),
            "convnet: output channels of each 3x3 convolution (padding 1)",
        ),
        KnobSpec::new(
            "model.dense",
            IntList { min: 1, max: 65_536 },
            KnobValue::IntList(Vec::new()),
            "convnet: widths of dense hidden layers between the convolutions and the linear head (activation, unit dropout)",
        ),
        KnobSpec::new("model.pool_every", Int { min: 1, max: 64 }, int(2), "convnet: a 2x2 max pool after every this many convolutions"),
        KnobSpec::new("model.depth", Int { min: 1, max: 64 }, int(1), "resnet: basic blocks in each of its three stages"),
        KnobSpec::new("model.width", Int { min: 1, max: 1024 }, int(16), "resnet: channels of the first stage (then 2x and 4x)"),
        KnobSpec::new("checks.evaluate.worst", Int { min: 0, max: 10_000 }, int(16), "evaluate: highest-loss test examples to list and draw"),
        // Regularization (issue 10): read by `overfit` (and `batch_preview` for augment.*).
        KnobSpec::new("augment.crop_pad", Int { min: 0, max: 64 }, int(0), "images: pad by this many zero pixels, then crop back at a random offset (0: off)"),
        KnobSpec::new("augment.hflip", Bool, KnobValue::Bool(false), "images: mirror left-right with probability 1/2 (wrong for digits and text)"),
        KnobSpec::new("augment.translate", Float { min: 0.0, max: 0.5 }, float(0.0), "images: random shift up to this fraction of the height and width, sub-pixel (0: off)"),
        KnobSpec::new("augment.rotate", Float { min: 0.0, max: 180.0 }, float(0.0), "images: random rotation up to this many degrees either way (0: off)"),
        KnobSpec::new("augment.cutout", Int { min: 0, max: 1024 }, int(0), "images: zero (the training mean) a random square of this side (0: off)"),
        KnobSpec::new("augment.noise", Float { min: 0.0, max: 100.0 }, float(0.0), "Gaussian input noise of this standard deviation, in normalised units (0: off)"),
        KnobSpec::new("model.dropout", Float { min: 0.0, max: 0.95 }, float(0.0), "dropout rate in training: units of dense layers, whole channels of conv layers (0: off)"),
        KnobSpec::new(
            "model.init_from",
            Str,
            text(""),
            "overfit starts from this safetensors checkpoint (tensors by name; relative to pipe.toml), or another pipe project's directory (its overfit checkpoint); empty: fresh init",
        ),
        KnobSpec::new("data.downscale", Int { min: 1, max: 64 }, int(1), "images: average each f x f block (2: 28x28 -> 14x14; 1: off)"),
        KnobSpec::new("train.early_stopping", Bool, KnobValue::Bool(false), "overfit: keep the weights of the best validation loss, stop after train.patience evaluations without improvement"),
        KnobSpec::new("train.patience", Int { min: 1, max: BIG }, int(5), "early stopping: evaluations without a better validation loss before stopping"),
        KnobSpec::new(
            "regularize.rungs",
            StrList,
            KnobValue::StrList(DEFAULT_RUNGS.iter().map(|rung| rung.to_string()).collect()),
            "the ladder: each rung adds to the one before either knob=value assignments (comma-separated) or a word: augment, dropout, weight_decay, larger (2x width and steps), downscale, smaller_batch; every rung is early stopped",
        ),
        KnobSpec::choice(
            knob::REGULARIZE_SELECT,
            Select::ValLoss,
            "regularize: the best rung has the lowest val_loss (what early stopping minimises) or the highest val_acc (ties: lower loss)",
        ),
        KnobSpec::new(
            "cache.remote",
            Str,
            text(""),
            "a shared remote cache behind .pipe: http[s]://host:port/prefix (Bazel's HTTP cache protocol) or s3://bucket/prefix (credentials from AWS_* in the environment); never in a key; --remote-cache and env PIPE_REMOTE_CACHE override it",
        ),
        KnobSpec::choice(
            knob::EVALUATE_MODEL,
            ScoredModel::Overfit,
            "evaluate: the stage whose model (its checkpoint.safetensors) is scored on the test split",
        ),
        // Random search (issue 11).
        KnobSpec::new("tune.trials", Int { min: 1, max: 100_000 }, int(16), "tune: random-search trials (raising it keeps the earlier trials)"),
        KnobSpec::new("tune.seed", Int { min: 0, max: i64::MAX }, int(0), "tune: seed of the trial points"),
        KnobSpec::new(
            "tune.space",
            StrList,
            KnobValue::StrList(vec!["train.lr = log(1e-4, 1e-2)".into(), "train.batch_size = choice(32, 64, 128)".into()]),
            "tune: searched knobs, each \"KNOB = log(a, b)\", \"uniform(a, b)\", \"int(a, b)\" or \"choice(v1, v2, ...)\"",
        ),
        KnobSpec::new("tune.steps", Int { min: 0, max: BIG }, int(0), "tune: training steps of each trial (0: train.steps)"),
        KnobSpec::new("tune.halving", Int { min: 0, max: 64 }, int(0), "tune: successive halving rate eta, keeping the best 1/eta of each rung (0: off)"),
        KnobSpec::new("tune.min_steps", Int { min: 1, max: BIG }, int(100), "tune: training steps of the first halving rung (then x eta up to tune.steps)"),
        KnobSpec::new("checks.tune.edge", Float { min: 0.0, max: 0.5 }, float(0.05), "tune: warn when the best value lies in this outer share of its searched range"),
        // Squeeze: ensembles and distillation (issue 13).
        KnobSpec::new("squeeze.k", Int { min: 1, max: 64 }, int(3), "squeeze: ensemble members, overfit under train.seed, train.seed + 1, ..."),
        KnobSpec::new("squeeze.temperature", Float { min: 0.05, max: 100.0 }, float(4.0), "squeeze: softmax temperature of the ensemble's predictions the student learns from"),
        KnobSpec::new("squeeze.alpha", prob, float(0.7), "squeeze: weight of the softened predictions in the student's loss (the rest: the hard labels)"),
        KnobSpec::choice(knob::SQUEEZE_STUDENT, StudentKind::Member, "squeeze: the student's architecture: the best member's, linear, or an mlp of squeeze.student_hidden"),
        KnobSpec::new(
            "squeeze.student_hidden",
            IntList { min: 1, max: 16_384 },
            KnobValue::IntList(vec![64]),
            "squeeze: hidden widths of an mlp student",
        ),
        KnobSpec::choice(knob::SQUEEZE_MEMBERS, MemberSource::Seeds, "squeeze: the members: seeds (overfit under train.seed, train.seed + 1, ...), tune (the squeeze.k best trials of tune, by val acc, then loss) or regularize (the best rung of regularize under train.seed, train.seed + 1, ...)"),
        KnobSpec::choice(knob::SQUEEZE_TTA, Tta::None, "squeeze: test-time augmentation of every member's predictions: none, or hflip (the mean over each image and its mirror image; for members trained with augment.hflip)"),
        KnobSpec::choice(knob::SQUEEZE_COMBINE, Combine::Mean, "squeeze: how probability tables are pooled (the views of squeeze.tta, then the members): mean (of probabilities) or geomean (the normalised geometric mean: softmax of the mean log-probability)"),
        KnobSpec::new("checks.squeeze.min_gain", Float { min: -1.0, max: 1.0 }, float(0.0), "squeeze: warn unless the ensemble's val accuracy beats its best member's by more than this"),
        KnobSpec::new("checks.squeeze.min_kept", Float { min: -100.0, max: 100.0 }, float(0.5), "squeeze: warn when the student keeps less than this share of the ensemble's gain"),
    ]
}
