//! AdamW matching `torch.optim.AdamW` (f32 state, bias correction, decoupled weight decay), learning-rate
//! schedules matching transformers' `get_*_schedule_with_warmup`, and global-norm clipping matching
//! `torch.nn.utils.clip_grad_norm_`.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "constant" => Schedule::Constant,
            "linear" => Schedule::Linear,
            "cosine" => Schedule::Cosine,
            other => bail!("unknown scheduler `{other}` (constant, linear, cosine)"),
        })
    }

    /// The multiplier of the peak lr at optimizer step `step` (0-based), as transformers' LambdaLR gives it:
    /// linear warmup from 0 over `warmup` steps, then constant, linear decay to 0, or half-cosine decay to 0.
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => ((total as f64 - step as f64) / (total.saturating_sub(warmup)).max(1) as f64).max(0.0),
            Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    step: u64,
    /// Updates each parameter has had (torch's per-parameter `state["step"]`, which its bias correction uses):
    /// a parameter without a gradient in a step (an expert no token reached) is skipped, as torch skips a
    /// parameter whose `.grad` is None.
    counts: Vec<u64>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, params: &[&Tensor]) -> Result<Self> {
        let zeros = |p: &&Tensor| p.zeros_like().and_then(|z| z.to_dtype(DType::F32));
        Ok(Self {
            cfg,
            step: 0,
            counts: vec![0; params.len()],
            m: params.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: params.iter().map(zeros).collect::<candle_core::Result<_>>()?,
        })
    }

    /// The state that continues an interrupted run exactly: update count and the first and second moments.
    pub fn state(&self) -> (u64, &[Tensor], &[Tensor]) {
        (self.step, &self.m, &self.v)
    }

    /// Each parameter's update count (see the field).
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Restores [`AdamW::state`]; the moments must match the parameters this optimizer was made for. `counts`:
    /// each parameter's update count, or `None` for `step` everywhere (a state saved before counts were kept).
    pub fn restore(&mut self, step: u64, counts: Option<Vec<u64>>, m: Vec<Tensor>, v: Vec<Tensor>) -> Result<()> {
        let counts = counts.unwrap_or_else(|| vec![step; self.m.len()]);
        if counts.len() != self.m.len() || counts.iter().any(|&c| c > step) {
            bail!("optimizer state holds {} update counts (up to {:?}) for {} tensors after {step} steps", counts.len(), counts.iter().max(), self.m.len());
        }
        if m.len() != self.m.len() || v.len() != self.v.len() {
            bail!("optimizer state holds {} moments, the adapter has {} tensors", m.len(), self.m.len());
        }
        for (new, old) in m.iter().chain(&v).zip(self.m.iter().chain(&self.v)) {
            if new.dims() != old.dims() {
                bail!("optimizer moment of shape {:?} does not fit a parameter of shape {:?}", new.dims(), old.dims());
            }
        }
        let device = self.m.first().map(|t| t.device().clone());
        let to_dev = |t: Vec<Tensor>| -> candle_core::Result<Vec<Tensor>> {
            t.into_iter().map(|x| match &device { Some(d) => x.to_device(d)?.to_dtype(DType::F32), None => Ok(x) }).collect()
        };
        self.step = step;
        self.counts = counts;
        self.m = to_dev(m)?;
        self.v = to_dev(v)?;
        Ok(())
    }

    /// One update with learning rate `lr`, in torch's order of operations.
    pub fn step(&mut self, params: &mut [&mut Tensor], grads: &[Tensor], lr: f64) -> Result<()> {
        self.step_some(params, grads, None, lr)
    }

    /// One update of the parameters whose `has_grad` is true (all when `None`); the others keep their value,
    /// moments and count, as torch's AdamW leaves a parameter without a gradient.
    pub fn step_some(&mut self, params: &mut [&mut Tensor], grads: &[Tensor], has_grad: Option<&[bool]>, lr: f64) -> Result<()> {
        let c = self.cfg;
        self.step += 1;
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            if has_grad.is_some_and(|h| !h[i]) {
                continue;
            }
            self.counts[i] += 1;
            let bc1 = 1.0 - c.beta1.powi(self.counts[i] as i32);
            let bc2_sqrt = (1.0 - c.beta2.powi(self.counts[i] as i32)).sqrt();
            let decayed = (&**p * (1.0 - lr * c.weight_decay))?;
            self.m[i] = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            self.v[i] = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((self.v[i].sqrt()? / bc2_sqrt)? + c.eps)?;
            **p = decayed.sub(&(self.m[i].div(&denom)? * (lr / bc1))?)?;
        }
        Ok(())
    }
}

/// The global L2 norm of all gradients. Each tensor's sum of squares stays on its device (widened to f64) and
/// only their total is read back: one host synchronisation per step instead of one per tensor.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    let sums = grads.iter().map(|g| g.sqr()?.sum_all()?.to_dtype(DType::F64)?.reshape(1)).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&sums, 0)?.sum_all()?.to_scalar::<f64>()?.sqrt())
}

/// Scales gradients so their global norm is at most `max_norm` (0 disables), like `clip_grad_norm_`:
/// coefficient `min(1, max_norm / (norm + 1e-6))`. Returns the norm before clipping.
pub fn clip_global_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 {
        let coef = (max_norm / (norm + 1e-6)).min(1.0);
        if coef < 1.0 {
            for g in grads.iter_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers_lambdas() {
        // get_linear_schedule_with_warmup(warmup=2, total=10)
        let lin: Vec<f64> = (0..10).map(|s| Schedule::Linear.factor(s, 2, 10)).collect();
        let want = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        for (a, b) in lin.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{lin:?}");
        }
        // get_cosine_schedule_with_warmup(warmup=1, total=3): 0, 1, 0.5
        let cos: Vec<f64> = (0..3).map(|s| Schedule::Cosine.factor(s, 1, 3)).collect();
        assert!((cos[0]).abs() < 1e-12 && (cos[1] - 1.0).abs() < 1e-12 && (cos[2] - 0.5).abs() < 1e-12, "{cos:?}");
        assert_eq!(Schedule::Constant.factor(5, 2, 10), 1.0);
        assert_eq!(Schedule::Constant.factor(1, 2, 10), 0.5);
    }

    #[test]
    fn adamw_first_steps_match_closed_form() {
        // With constant gradient g, torch's AdamW gives m̂ = g, v̂ = g², so each step moves p by
        // -lr * (g/(|g| + eps)) after decay p *= (1 - lr*wd).
        let dev = candle_core::Device::Cpu;
        let mut p = Tensor::new(&[1.0f32, -2.0], &dev).unwrap();
        let g = Tensor::new(&[0.5f32, -0.25], &dev).unwrap();
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        let mut opt = AdamW::new(cfg, &[&p]).unwrap();
        let (lr, mut want) = (0.01f64, [1.0f64, -2.0]);
        for _ in 0..3 {
            opt.step(&mut [&mut p], std::slice::from_ref(&g), lr).unwrap();
            for (w, gi) in want.iter_mut().zip([0.5f64, -0.25]) {
                *w = *w * (1.0 - lr * 0.1) - lr * gi / (gi.abs() + 1e-8);
            }
        }
        let got = p.to_vec1::<f32>().unwrap();
        for (a, b) in got.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn clipping_matches_torch_coefficient() {
        let dev = candle_core::Device::Cpu;
        let mut g = vec![Tensor::new(&[3.0f32], &dev).unwrap(), Tensor::new(&[4.0f32], &dev).unwrap()];
        let norm = clip_global_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let coef = 1.0 / (5.0 + 1e-6);
        assert!((g[0].to_vec1::<f32>().unwrap()[0] as f64 - 3.0 * coef).abs() < 1e-6);
        let mut g2 = vec![Tensor::new(&[0.3f32], &dev).unwrap()];
        clip_global_norm(&mut g2, 1.0).unwrap();
        assert_eq!(g2[0].to_vec1::<f32>().unwrap()[0], 0.3);
    }

    /// torch's AdamW skips a parameter whose `.grad` is None: no weight decay, no moment decay, and its own step
    /// count (bias correction) does not advance. A parameter skipped in the first step and updated in the second
    /// moves exactly as one updated in the first step.
    #[test]
    fn a_parameter_without_gradient_is_left_alone_and_keeps_its_own_count() {
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        let start = Tensor::new(&[1.0f32, -2.0, 0.5], &candle_core::Device::Cpu).unwrap();
        let g = Tensor::new(&[0.3f32, -0.1, 0.02], &candle_core::Device::Cpu).unwrap();
        let (mut a, mut b) = (start.clone(), start.clone());
        let mut opt = AdamW::new(cfg, &[&a, &b]).unwrap();
        opt.step_some(&mut [&mut a, &mut b], &[g.clone(), g.zeros_like().unwrap()], Some(&[true, false]), 1e-2).unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap(), start.to_vec1::<f32>().unwrap(), "skipped: not even weight decay");
        assert_eq!(opt.counts(), [1, 0]);
        let after_one = a.to_vec1::<f32>().unwrap();
        opt.step_some(&mut [&mut a, &mut b], &[g.clone(), g.clone()], None, 1e-2).unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap(), after_one, "its first update, with its own bias correction");
        assert_eq!(opt.counts(), [2, 1]);
    }

    #[test]
    fn global_norm_is_the_f64_norm_over_every_tensor() {
        let dev = candle_core::Device::Cpu;
        let a: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-3).collect();
        let b: Vec<f32> = (0..77).map(|i| (i as f32).sin() * 3.0).collect();
        let grads = [Tensor::from_vec(a.clone(), (10, 100), &dev).unwrap(), Tensor::from_vec(b.clone(), 77, &dev).unwrap()];
        let want = a.iter().chain(&b).map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let got = global_norm(&grads).unwrap();
        // Per-tensor sums run in f32 (as before, and as torch's clip_grad_norm_ does per tensor).
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
        assert_eq!(global_norm(&[]).unwrap(), 0.0);
    }
}
