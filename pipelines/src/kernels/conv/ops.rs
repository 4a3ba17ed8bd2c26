//! The candle custom ops: the differentiable convolution and its backward helpers.

use super::*;

/// The differentiable op: `(x, weight)` or `(x, weight, bias)`.
pub(super) struct Conv2d {
    pub(super) params: Conv2dParams,
    /// With `params.pool`: each pooled output's winning window element, written by
    /// the forward pass for the backward pass (one op value per application).
    pub(super) winners: Mutex<Option<Arc<Vec<u8>>>>,
}

impl Conv2d {
    fn fwd(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(x.1.dims(), w.1.dims(), self.params)?;
        let (x, w) = (f32_slice(x.0, x.1, "conv2d")?, f32_slice(w.0, w.1, "conv2d")?);
        if self.params.pool {
            let (y, winners) = forward_pooled(&g, x, w, bias, self.params.relu);
            *self.winners.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(winners));
            let (ho, wo) = g.pooled();
            return Ok((CpuStorage::F32(y), Shape::from((g.batch, g.c_out, ho, wo))));
        }
        let y = forward(&g, x, w, bias, self.params.relu);
        Ok((CpuStorage::F32(y), Shape::from((g.batch, g.c_out, g.h_out, g.w_out))))
    }

    /// Gradients of `x` (if tracked) and of the weight and bias (if either is).
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        dy: &Tensor,
        with_bias: bool,
        wants_weight: bool,
    ) -> Result<Grads> {
        let g = Geometry::new(x.dims(), w.dims(), self.params)?;
        let (dy, y) = (dy.contiguous()?, y.contiguous()?);
        let mode = if self.params.pool {
            let winners = self.winners.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let Some(winners) = winners else { bail!("conv2d backward: the pooled forward left no winners") };
            Mode::Pooled { winners, relu: self.params.relu }
        } else if self.params.relu {
            Mode::Relu
        } else {
            Mode::Plain
        };
        let dx = if x.track_op() {
            Some(dy.apply_op3_no_bwd(&y, w, &Backward { geometry: g, mode: mode.clone(), pass: Pass::Input })?)
        } else {
            None
        };
        if !wants_weight {
            return Ok(Grads { dx, dw: None, db: None });
        }
        let flat = dy.apply_op3_no_bwd(&y, x, &Backward { geometry: g, mode, pass: Pass::Weight { with_bias } })?;
        let dw = flat.narrow(0, 0, g.c_out * g.taps())?.reshape(w.shape())?;
        let db = if with_bias { Some(flat.narrow(0, g.c_out * g.taps(), g.c_out)?) } else { None };
        Ok(Grads { dx, dw: Some(dw), db })
    }
}

/// Which activation the forward fused, so how the backward reads `dy` (see [`Upstream`]).
#[derive(Clone)]
pub(super) enum Mode {
    Plain,
    Relu,
    Pooled { winners: Arc<Vec<u8>>, relu: bool },
}

impl Mode {
    /// The output gradient `dy` with the op's output `y`, as the passes read it.
    fn upstream<'a>(&'a self, g: &Geometry, dy: &'a [f32], y: &'a [f32]) -> Result<Upstream<'a>> {
        let upstream = match self {
            Mode::Plain => Upstream::Plain(dy),
            Mode::Relu => Upstream::Relu { dy, y },
            Mode::Pooled { winners, relu } => Upstream::Pooled { dy, y, winners, relu: *relu },
        };
        upstream.check(g)?;
        Ok(upstream)
    }
}

pub(super) struct Grads {
    pub(super) dx: Option<Tensor>,
    pub(super) dw: Option<Tensor>,
    pub(super) db: Option<Tensor>,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "pipe-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grads = self.grads(x, w, y, dy, false, w.track_op())?;
        Ok((grads.dx, grads.dw))
    }
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "pipe-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bias = f32_slice(s3, l3, "conv2d bias")?;
        if l2.dims().first() != Some(&bias.len()) {
            bail!("conv2d: bias has {} elements for weight {:?}", bias.len(), l2.dims())
        }
        self.fwd((s1, l1), (s2, l2), Some(bias))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grads = self.grads(x, w, y, dy, true, w.track_op() || b.track_op())?;
        Ok((grads.dx, grads.dw, grads.db))
    }
}

/// Which gradient a [`Backward`] op computes from `(dy, y, operand)`.
#[derive(Clone, Copy)]
pub(super) enum Pass {
    /// `operand` is the weight; the result is `dx`.
    Input,
    /// `operand` is the input `x`; the result is `[dweight (flat), dbias]`.
    Weight { with_bias: bool },
}

/// `(dy, y, operand) -> gradient` (see [`Pass`]), no backward of its own.
pub(super) struct Backward {
    pub(super) geometry: Geometry,
    pub(super) mode: Mode,
    pub(super) pass: Pass,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::Input => "pipe-conv2d-input-grad",
            Pass::Weight { .. } => "pipe-conv2d-weight-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let what = "conv2d backward";
        let (dy, y, operand) = (f32_slice(s1, l1, what)?, f32_slice(s2, l2, what)?, f32_slice(s3, l3, what)?);
        let upstream = self.mode.upstream(g, dy, y)?;
        match self.pass {
            Pass::Input => {
                if operand.len() != g.c_out * g.taps() {
                    bail!("{what}: weight {:?} does not match {g:?}", l3.dims())
                }
                let dx = input_grad(g, &upstream, operand);
                Ok((CpuStorage::F32(dx), Shape::from((g.batch, g.c_in, g.h, g.w))))
            }
            Pass::Weight { with_bias } => {
                if operand.len() != g.batch * g.image() {
                    bail!("{what}: input {:?} does not match {g:?}", l3.dims())
                }
                let out = weight_grad(g, &upstream, operand, with_bias);
                let len = out.len();
                Ok((CpuStorage::F32(out), Shape::from(len)))
            }
        }
    }
}
