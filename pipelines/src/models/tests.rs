//! Tests every model of the zoo must pass: loss at init near the label entropy,
//! overfitting a batch of 2, batch independence (grad_deps), state round trips.

use candle_core::{Device, Tensor, Var};

use super::*;
use crate::grad_deps::check;
use crate::train::{evaluate, OptimSpec, OptimizerKind, SplitTensors, Trainer};

const CLASSES: usize = 3;

/// Priors 0.5, 0.25, 0.25: label entropy 1.0397 nats.
fn priors() -> Vec<f32> {
    vec![0.5, 0.25, 0.25]
}

fn entropy() -> f64 {
    priors().iter().map(|&p| -(p as f64) * (p as f64).ln()).sum()
}

/// `n` examples of 1x8x8 (or 3x8x8) images, flat, labels by the priors.
fn images(n: usize, channels: usize) -> SplitTensors {
    let features = channels * 64;
    let mut rng = crate::rng::Rng::new(7, "test/images");
    let x: Vec<f32> = (0..n * features).map(|_| rng.normal() as f32).collect();
    let y: Vec<u32> = (0..n).map(|i| [0, 0, 1, 2][i % 4]).collect();
    SplitTensors {
        x: Tensor::from_vec(x, (n, features), &Device::Cpu).unwrap(),
        y: Tensor::from_vec(y, n, &Device::Cpu).unwrap(),
        len: n,
    }
}

fn specs(channels: usize) -> Vec<ModelSpec> {
    vec![
        ModelSpec::Mlp(MlpSpec { n_in: channels * 64, hidden: vec![], n_out: CLASSES, activation: Activation::Relu }),
        ModelSpec::Mlp(MlpSpec {
            n_in: channels * 64,
            hidden: vec![32, 32],
            n_out: CLASSES,
            activation: Activation::Relu,
        }),
        ModelSpec::Convnet(ConvnetSpec {
            channels_in: channels,
            height: 8,
            width: 8,
            channels: vec![8, 16],
            pool_every: 1,
            dense: vec![],
            n_out: CLASSES,
            activation: Activation::Relu,
        }),
        ModelSpec::Convnet(ConvnetSpec {
            channels_in: channels,
            height: 8,
            width: 8,
            channels: vec![8],
            pool_every: 1,
            dense: vec![24],
            n_out: CLASSES,
            activation: Activation::Relu,
        }),
        ModelSpec::Resnet(ResnetSpec {
            channels_in: channels,
            height: 8,
            width: 8,
            depth: 1,
            width_base: 4,
            n_out: CLASSES,
        }),
    ]
}

fn recipe_init() -> Init {
    Init::Recipe { log_priors: priors().iter().map(|p| p.ln()).collect() }
}

#[test]
fn loss_at_init_is_the_label_entropy() {
    for spec in specs(1) {
        let model = spec.build(&recipe_init(), 3, &Device::Cpu).unwrap();
        model.set_training(false);
        let (loss, _) = evaluate(&model, &images(64, 1)).unwrap();
        assert!((loss - entropy()).abs() < 0.02, "{}: loss at init {loss}, entropy {}", spec.kind_name(), entropy());
    }
}

#[test]
fn every_model_overfits_a_batch_of_two() {
    let adam =
        OptimSpec { kind: OptimizerKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, lr: 3e-3, weight_decay: 0.0 };
    for spec in specs(1) {
        let model = spec.build(&recipe_init(), 3, &Device::Cpu).unwrap();
        let batch = images(2, 1);
        let mut trainer = Trainer::new(&model, &adam).unwrap();
        let mut loss = f32::INFINITY;
        while trainer.step < 1000 && loss > 1e-3 {
            loss = trainer.step(&batch.x, &batch.y).unwrap();
        }
        model.set_training(false);
        let (eval_loss, acc) = evaluate(&model, &batch).unwrap();
        assert!(loss <= 1e-3, "{}: batch loss {loss} after {} steps", spec.kind_name(), trainer.step);
        assert_eq!(acc, 1.0, "{}: eval loss {eval_loss}", spec.kind_name());
    }
}

#[test]
fn every_model_passes_grad_deps_in_evaluation_mode() {
    for channels in [1, 3] {
        for spec in specs(channels) {
            let model = spec.build(&Init::Naive, 5, &Device::Cpu).unwrap();
            let probes = check(&model, &images(6, channels).x, &[0, 2, 5]).unwrap();
            assert_eq!(probes.len(), 3);
            for probe in probes {
                assert!(probe.leaks_from.is_empty() && probe.depends_on_itself, "{}: {probe:?}", spec.kind_name());
            }
        }
    }
}

/// Batch norm in training mode mixes the batch by design; grad_deps sees it when
/// the model is left in training mode.
struct AlwaysTraining(Box<dyn Model>);

impl Model for AlwaysTraining {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.set_training(true);
        self.0.forward(x)
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        self.0.parameters()
    }
}

#[test]
fn grad_deps_in_training_mode_flags_batch_norm() {
    let spec = ResnetSpec { channels_in: 1, height: 8, width: 8, depth: 1, width_base: 4, n_out: CLASSES };
    let model = AlwaysTraining(ModelSpec::Resnet(spec).build(&Init::Naive, 5, &Device::Cpu).unwrap());
    let probes = check(&model, &images(6, 1).x, &[0, 2, 5]).unwrap();
    assert!(probes.iter().all(|p| !p.leaks_from.is_empty()), "batch statistics mix every example: {probes:?}");
}

/// A conv model with the classic wrong reshape: `[b, c, h, w] -> [c, b, h, w]`
/// through a transpose and a reshape where a flatten was meant.
struct MixingConvnet {
    weight: Var,
    head: Var,
}

impl Model for MixingConvnet {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b = x.dim(0)?;
        let image = x.reshape((b, 1, 8, 8))?;
        let h = layers::conv2d(&image, self.weight.as_tensor(), None, layers::Conv2dParams { padding: 1, stride: 1 })?;
        let h = layers::max_pool2d(&h.relu()?)?; // [b, 4, 4, 4]
        let wrong = h.transpose(0, 1)?.contiguous()?.reshape((b, 64))?; // meant: h.flatten_from(1)
        wrong.matmul(self.head.as_tensor())
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        vec![("conv.weight".into(), self.weight.clone()), ("fc.weight".into(), self.head.clone())]
    }
}

#[test]
fn planted_batch_mixing_convnet_fails_grad_deps() {
    let model = MixingConvnet {
        weight: normal(1, "mix.conv", &[4, 1, 3, 3], 0.5, &Device::Cpu).unwrap(),
        head: normal(1, "mix.fc", &[64, CLASSES], 0.1, &Device::Cpu).unwrap(),
    };
    let probes = check(&model, &images(4, 1).x, &[0, 3]).unwrap();
    assert!(probes.iter().any(|p| !p.leaks_from.is_empty()), "{probes:?}");
}

#[test]
fn the_digits_convnet_is_the_issue_s_architecture() {
    let spec = ConvnetSpec {
        channels_in: 1,
        height: 8,
        width: 8,
        channels: vec![16, 32],
        pool_every: 2,
        dense: vec![],
        n_out: 10,
        activation: Activation::Relu,
    };
    let shapes = |spec: &ConvnetSpec| -> Vec<(String, Vec<usize>)> {
        let model = Convnet::new(spec, &Init::Naive, 0, &Device::Cpu).unwrap();
        model.parameters().into_iter().map(|(name, var)| (name, var.dims().to_vec())).collect()
    };
    let expected = |names: [(&str, &[usize]); 6]| -> Vec<(String, Vec<usize>)> {
        names.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect()
    };
    assert_eq!(
        shapes(&spec),
        expected([
            ("conv1.weight", &[16, 1, 3, 3]),
            ("conv1.bias", &[16]),
            ("conv2.weight", &[32, 16, 3, 3]),
            ("conv2.bias", &[32]),
            ("fc.weight", &[10, 512]),
            ("fc.bias", &[10]),
        ])
    );
    // Fashion-MNIST: conv 1->32, pool, conv 32->64, pool, linear 3136->10.
    let fashion = ConvnetSpec { height: 28, width: 28, channels: vec![32, 64], pool_every: 1, ..spec };
    assert_eq!(shapes(&fashion)[4], ("fc.weight".to_string(), vec![10, 3136]));
    // With a dense hidden layer (`model.dense = [256]`): dense1 3136->256, then fc.
    let dense = ConvnetSpec { dense: vec![256], ..fashion.clone() };
    let names: Vec<_> = shapes(&dense).into_iter().skip(4).collect();
    assert_eq!(
        names,
        [
            ("dense1.weight", vec![256, 3136]),
            ("dense1.bias", vec![256]),
            ("fc.weight", vec![10, 256]),
            ("fc.bias", vec![10])
        ]
        .map(|(n, s)| (n.to_string(), s))
    );
    let meta = ModelSpec::Convnet(dense.clone()).to_meta();
    assert_eq!(ModelSpec::from_meta(&meta).unwrap().to_meta(), meta);
    assert!(ModelSpec::Convnet(fashion).to_meta().get("dense").is_none(), "no dense key without dense layers");
}

#[test]
fn state_holds_buffers_and_round_trips_through_meta() {
    for spec in specs(3) {
        let trained = spec.build(&recipe_init(), 1, &Device::Cpu).unwrap();
        // One training-mode forward moves batch norm's running statistics.
        trained.forward(&images(4, 3).x).unwrap();
        let state: std::collections::HashMap<String, Tensor> = state(&trained).into_iter().collect();
        if let ModelSpec::Resnet(_) = spec {
            assert!(state.contains_key("bn1.running_mean") && state.contains_key("layer2.0.shortcut.1.running_var"));
        }
        let rebuilt_spec = ModelSpec::from_meta(&spec.to_meta()).unwrap();
        assert_eq!(rebuilt_spec, spec);
        let restored = rebuilt_spec.build(&Init::Naive, 9, &Device::Cpu).unwrap();
        load_state(restored.as_ref(), &state).unwrap();
        trained.set_training(false);
        restored.set_training(false);
        let x = images(5, 3).x;
        let (a, b) = (trained.forward(&x).unwrap(), restored.forward(&x).unwrap());
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{}", spec.kind_name());
    }
}

#[test]
fn chunked_evaluation_is_the_same_function() {
    let spec = &specs(1)[2];
    let model = spec.build(&recipe_init(), 2, &Device::Cpu).unwrap();
    model.set_training(false);
    let x = images(EVAL_CHUNK + 76, 1).x;
    let whole = model.forward(&x).unwrap();
    let ModelSpec::Convnet(convnet) = spec else { unreachable!("specs()[2] is the convnet") };
    let unchunked = Convnet::new(convnet, &recipe_init(), 2, &Device::Cpu).unwrap().run_whole(&x);
    let diff = (whole - unchunked).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-6, "{diff}");
}

fn logits(model: &dyn Model, x: &Tensor) -> Vec<u32> {
    model.forward(x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn dropout_is_inactive_in_evaluation_mode() {
    let x = images(6, 1).x;
    for spec in specs(1).iter().skip(1) {
        let plain = spec.build(&recipe_init(), 3, &Device::Cpu).unwrap();
        let dropped = spec.build(&recipe_init(), 3, &Device::Cpu).unwrap();
        dropped.set_dropout(0.5);
        plain.set_training(false);
        dropped.set_training(false);
        let once = logits(dropped.as_ref(), &x);
        assert_eq!(once, logits(dropped.as_ref(), &x), "{}: same outputs twice", spec.kind_name());
        assert_eq!(once, logits(plain.as_ref(), &x), "{}: the same function as without dropout", spec.kind_name());
    }
}

#[test]
fn dropout_masks_depend_on_the_step_only() {
    let x = images(6, 1).x;
    for spec in specs(1).iter().skip(1) {
        let model = spec.build(&recipe_init(), 3, &Device::Cpu).unwrap();
        model.set_dropout(0.5);
        model.set_step(4);
        let a = logits(model.as_ref(), &x);
        // Batch norm's batch statistics do not move between these passes' outputs.
        assert_eq!(a, logits(model.as_ref(), &x), "{}: same step, same mask", spec.kind_name());
        model.set_step(5);
        assert_ne!(a, logits(model.as_ref(), &x), "{}: another step, another mask", spec.kind_name());
        model.set_dropout(0.0);
        model.set_step(4);
        assert_ne!(a, logits(model.as_ref(), &x), "{}: dropout changed the training output", spec.kind_name());
    }
}
