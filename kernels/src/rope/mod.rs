//! `rope`: rotary position embedding, half-split layout ("rotate_half", GPT-NeoX style): dimension
//! `i` pairs with `i + head_dim/2`; `inv_freq[i] = 1 / theta^(2i/head_dim)` in f32; angle
//! `= position · inv_freq[i]` in f32; `x' = x·cos + rotate_half(x)·sin`.
//!
//! - `x`: `[n_tokens, n_heads · head_dim]` f32, rotated in place
//! - `positions`: `[n_tokens]`

pub mod cpu;
pub mod cuda;

#[derive(Clone, Debug)]
pub struct Rope {
    pub head_dim: usize,
    /// `[head_dim / 2]`
    pub inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| {
                let p = theta.powf((2 * i) as f64 / head_dim as f64) as f32;
                1.0f32 / p
            })
            .collect();
        Rope { head_dim, inv_freq }
    }
}
