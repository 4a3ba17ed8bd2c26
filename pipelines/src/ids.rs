//! Every knob and stage id of the recipe as a typed constant: stage code names knobs
//! and stages only through these, so a misspelt name does not compile.

use workspace::{KnobId, StageId};

/// Declares each constant once and lists them all in `ALL` (for the schema test).
macro_rules! ids {
    ($type:ident { $($name:ident = $text:literal,)* }) => {
        $(pub const $name: $type = $type($text);)*
        /// Every constant of this module, in declaration order.
        pub const ALL: &[$type] = &[$($name),*];
    };
}

/// Knob ids (`train.lr`): the schema in `knobs.rs` declares exactly these.
pub mod knob {
    use super::KnobId;

    ids!(KnobId {
        DATA_SOURCE = "data.source",
        DATA_SEED = "data.seed",
        DATA_SPLIT = "data.split",
        DATA_NORMALIZE = "data.normalize",
        DATA_CSV_LABEL = "data.csv.label",
        DATA_CSV_HEADER = "data.csv.header",
        DATA_IMAGES_SIZE = "data.images.size",
        DATA_IMAGES_CHANNELS = "data.images.channels",
        DATA_HUMAN_LABELS = "data.human_labels",
        MODEL_KIND = "model.kind",
        MODEL_HIDDEN = "model.hidden",
        MODEL_ACTIVATION = "model.activation",
        TRAIN_OPTIMIZER = "train.optimizer",
        TRAIN_LR = "train.lr",
        TRAIN_BETA1 = "train.beta1",
        TRAIN_BETA2 = "train.beta2",
        TRAIN_EPS = "train.eps",
        TRAIN_MOMENTUM = "train.momentum",
        TRAIN_WEIGHT_DECAY = "train.weight_decay",
        TRAIN_BATCH_SIZE = "train.batch_size",
        TRAIN_STEPS = "train.steps",
        TRAIN_SEED = "train.seed",
        TRAIN_EVAL_EVERY = "train.eval_every",
        INSPECT_TOP_K = "checks.inspect.top_k",
        INSPECT_KNN_K = "checks.inspect.knn_k",
        INSPECT_KNN_QUERIES = "checks.inspect.knn_queries",
        INSPECT_OUTLIER_Z = "checks.inspect.outlier_z",
        INSPECT_MAX_IMBALANCE = "checks.inspect.max_imbalance",
        INSPECT_MAX_LEAKED = "checks.inspect.max_leaked",
        INSPECT_MAX_DUPLICATES = "checks.inspect.max_duplicates",
        INSPECT_MAX_CONFLICTING = "checks.inspect.max_conflicting",
        INSPECT_MAX_NEAR_DUPLICATE_SHARE = "checks.inspect.max_near_duplicate_share",
        INSPECT_MAX_CORRUPT = "checks.inspect.max_corrupt",
        INSPECT_MAX_CONSTANT_SHARE = "checks.inspect.max_constant_share",
        INSPECT_MAX_ALL_ZERO = "checks.inspect.max_all_zero",
        INSPECT_MAX_OUTLIER_SHARE = "checks.inspect.max_outlier_share",
        INSPECT_MAX_SUSPECT_SHARE = "checks.inspect.max_suspect_share",
        LOSS_AT_INIT_TOLERANCE = "checks.loss_at_init.tolerance",
        ZERO_INPUT_STEPS = "checks.zero_input_baseline.steps",
        ZERO_INPUT_MARGIN = "checks.zero_input_baseline.margin",
        OVERFIT_BATCH_SIZE = "checks.overfit_batch.size",
        OVERFIT_BATCH_TARGET_LOSS = "checks.overfit_batch.target_loss",
        OVERFIT_BATCH_MAX_STEPS = "checks.overfit_batch.max_steps",
        OVERFIT_MIN_DROP = "checks.overfit.min_drop",
        OVERFIT_MIN_TRAIN_ACC = "checks.overfit.min_train_acc",
        DUMB_BASELINES_STEPS = "checks.dumb_baselines.steps",
        DUMB_BASELINES_LR = "checks.dumb_baselines.lr",
        DUMB_BASELINES_FAIL = "checks.dumb_baselines.fail",
        GRAD_DEPS_SAMPLES = "checks.grad_deps.samples",
        BATCH_PREVIEW_MAX_ABS = "checks.batch_preview.max_abs",
        DYNAMICS_SIZE = "checks.dynamics.size",
        TRAIN_NESTEROV = "train.nesterov",
        TRAIN_SCHEDULE = "train.schedule",
        TRAIN_WARMUP_STEPS = "train.warmup_steps",
        TRAIN_STEP_EVERY = "train.step_every",
        TRAIN_STEP_GAMMA = "train.step_gamma",
        TRAIN_MIN_LR_RATIO = "train.min_lr_ratio",
        LR_SCHEDULE_MIN_RATIO = "checks.lr_schedule.min_ratio",
        LR_SCHEDULE_BY_FRACTION = "checks.lr_schedule.by_fraction",
        // The data audit's neighbour findings (issue 15).
        INSPECT_FOLDS = "checks.inspect.folds",
        INSPECT_NEAR_DUPLICATE_DISTANCE = "checks.inspect.near_duplicate_distance",
        INSPECT_MAX_SELF_CONFIDENCE = "checks.inspect.max_self_confidence",
        MODEL_CHANNELS = "model.channels",
        MODEL_POOL_EVERY = "model.pool_every",
        MODEL_DENSE = "model.dense",
        MODEL_DEPTH = "model.depth",
        MODEL_WIDTH = "model.width",
        EVALUATE_WORST = "checks.evaluate.worst",
        // Regularization (issue 10).
        AUGMENT_CROP_PAD = "augment.crop_pad",
        AUGMENT_HFLIP = "augment.hflip",
        AUGMENT_TRANSLATE = "augment.translate",
        AUGMENT_ROTATE = "augment.rotate",
        AUGMENT_CUTOUT = "augment.cutout",
        AUGMENT_NOISE = "augment.noise",
        MODEL_DROPOUT = "model.dropout",
        MODEL_INIT_FROM = "model.init_from",
        DATA_DOWNSCALE = "data.downscale",
        TRAIN_EARLY_STOPPING = "train.early_stopping",
        TRAIN_PATIENCE = "train.patience",
        REGULARIZE_RUNGS = "regularize.rungs",
        REGULARIZE_SELECT = "regularize.select",
        EVALUATE_MODEL = "evaluate.model",
        CACHE_REMOTE = "cache.remote",
        // Random search (issue 11).
        TUNE_TRIALS = "tune.trials",
        TUNE_SEED = "tune.seed",
        TUNE_SPACE = "tune.space",
        TUNE_STEPS = "tune.steps",
        TUNE_HALVING = "tune.halving",
        TUNE_MIN_STEPS = "tune.min_steps",
        TUNE_EDGE = "checks.tune.edge",
        // Squeeze: ensembles and distillation (issue 13).
        SQUEEZE_K = "squeeze.k",
        SQUEEZE_TEMPERATURE = "squeeze.temperature",
        SQUEEZE_ALPHA = "squeeze.alpha",
        SQUEEZE_STUDENT = "squeeze.student",
        SQUEEZE_STUDENT_HIDDEN = "squeeze.student_hidden",
        SQUEEZE_MEMBERS = "squeeze.members",
        SQUEEZE_TTA = "squeeze.tta",
        SQUEEZE_COMBINE = "squeeze.combine",
        SQUEEZE_MIN_GAIN = "checks.squeeze.min_gain",
        SQUEEZE_MIN_KEPT = "checks.squeeze.min_kept",
    });
}

/// Stage ids, in recipe order.
pub mod stage {
    use super::StageId;

    ids!(StageId {
        DATA = "data",
        INSPECT = "inspect",
        BATCH_PREVIEW = "batch_preview",
        HUMAN_BASELINE = "human_baseline",
        DUMB_BASELINES = "dumb_baselines",
        GRAD_DEPS = "grad_deps",
        LOSS_AT_INIT = "loss_at_init",
        ZERO_INPUT_BASELINE = "zero_input_baseline",
        OVERFIT_BATCH = "overfit_batch",
        OVERFIT = "overfit",
        LABEL_ISSUES = "label_issues",
        BEATS_BASELINES = "beats_baselines",
        REGULARIZE = "regularize",
        TUNE = "tune",
        SQUEEZE = "squeeze",
        EVALUATE = "evaluate",
    });
}
