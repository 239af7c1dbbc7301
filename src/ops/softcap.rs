//! Tanh soft-capping, `y = cap · tanh(x / cap)`: Gemma-2 bounds its final logits with it (its attention scores
//! are capped inside [`super::attention`]).

use candle_core::{Result, Tensor};

pub fn forward(x: &Tensor, cap: f64) -> Result<Tensor> {
    (x / cap)?.tanh()? * cap
}

/// `dx = dy · (1 − (y / cap)²)`, from the output `y` (which is all backward needs to keep).
pub fn backward(dy: &Tensor, y: &Tensor, cap: f64) -> Result<Tensor> {
    dy.mul(&(y / cap)?.sqr()?.affine(-1.0, 1.0)?)
}

/// [`forward`] when a cap is set, the identity otherwise.
pub fn maybe(x: Tensor, cap: Option<f64>) -> Result<Tensor> {
    match cap {
        Some(c) => forward(&x, c),
        None => Ok(x),
    }
}
