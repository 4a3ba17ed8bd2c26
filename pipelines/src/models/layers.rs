//! The image layers every model calls: convolution, 2x2 max pooling and batch norm.
//! Convolution and pooling go through [`conv2d`], [`conv2d_relu`] and [`max_pool2d`]
//! only: on CPU they are our `kernels` ops (im2col + our GEMM, a fixed order of
//! additions whatever the threads or instruction set), elsewhere candle's.

use candle_core::{DType, Device, Result, Tensor, Var};

use super::Buffer;

/// Padding and stride of a square convolution (dilation 1, one group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    pub padding: usize,
    pub stride: usize,
}

/// `x [b, c_in, h, w]` convolved with `weight [c_out, c_in, k, k]`, plus `bias [c_out]`.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, params: Conv2dParams) -> Result<Tensor> {
    crate::kernels::conv2d(x, weight, bias, kernel_params(params, false, false))
}

/// `relu(conv2d(x))`, then 2x2 max pooling when `pool`, as one op: the same values as
/// [`conv2d`], ReLU and [`max_pool2d`] one after the other, without storing the
/// full-resolution activation.
pub fn conv2d_relu(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: Conv2dParams,
    pool: bool,
) -> Result<Tensor> {
    crate::kernels::conv2d(x, weight, bias, kernel_params(params, true, pool))
}

fn kernel_params(params: Conv2dParams, relu: bool, pool: bool) -> crate::kernels::Conv2dParams {
    crate::kernels::Conv2dParams { padding: params.padding, stride: params.stride, relu, pool }
}

/// 2x2 max pooling with stride 2 (odd trailing rows and columns are dropped).
pub fn max_pool2d(x: &Tensor) -> Result<Tensor> {
    crate::kernels::max_pool2d(x)
}

/// Batch norm over `[b, c, h, w]` (per channel), PyTorch's definition: in training
/// the batch's mean and biased variance normalise, and the running statistics move by
/// `momentum` towards the batch mean and unbiased variance; in evaluation the running
/// statistics normalise, so each example's output depends on that example alone.
pub struct BatchNorm2d {
    pub weight: Var,
    pub bias: Var,
    pub running_mean: Buffer,
    pub running_var: Buffer,
    momentum: f64,
    eps: f64,
}

impl BatchNorm2d {
    pub fn new(channels: usize, device: &Device) -> Result<BatchNorm2d> {
        Ok(BatchNorm2d {
            weight: Var::ones(channels, DType::F32, device)?,
            bias: Var::zeros(channels, DType::F32, device)?,
            running_mean: Buffer::new(Tensor::zeros(channels, DType::F32, device)?),
            running_var: Buffer::new(Tensor::ones(channels, DType::F32, device)?),
            momentum: 0.1,
            eps: 1e-5,
        })
    }

    pub fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (mean, var) = if training {
            let mean = x.mean_keepdim((0, 2, 3))?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
            let n = (b * h * w) as f64;
            let unbiased = (var.detach() * (n / (n - 1.0).max(1.0)))?.flatten_all()?;
            let m = self.momentum;
            self.running_mean.set(((self.running_mean.get() * (1.0 - m))? + (mean.detach().flatten_all()? * m)?)?);
            self.running_var.set(((self.running_var.get() * (1.0 - m))? + (unbiased * m)?)?);
            (mean, var)
        } else {
            (self.running_mean.get().reshape((1, c, 1, 1))?, self.running_var.get().reshape((1, c, 1, 1))?)
        };
        let normed = x.broadcast_sub(&mean)?.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight.as_tensor().reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bias.as_tensor().reshape((1, c, 1, 1))?)
    }

    /// `(name.weight, ...)` parameters under `prefix`.
    pub fn parameters(&self, prefix: &str) -> Vec<(String, Var)> {
        vec![(format!("{prefix}.weight"), self.weight.clone()), (format!("{prefix}.bias"), self.bias.clone())]
    }

    pub fn buffers(&self, prefix: &str) -> Vec<(String, Buffer)> {
        vec![
            (format!("{prefix}.running_mean"), self.running_mean.clone()),
            (format!("{prefix}.running_var"), self.running_var.clone()),
        ]
    }
}
