//! `rope`: rotary position embedding. Half-split layout ("rotate_half", GPT-NeoX style, the
//! default): dimension `i` pairs with `i + head_dim/2`; interleaved layout (llama.cpp's GGUF
//! llama weights, whose q/k rows its converter permuted; DeepSeek's MLA): dimensions `2i` and
//! `2i + 1` form pair `i`. `inv_freq[i] = 1 / theta^(2i/head_dim)` in f32; angle
//! `= position · inv_freq[i]` in f32; `(a, b) → (a·cos − b·sin, b·cos + a·sin)`.
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
    /// Pairs `(2i, 2i + 1)` instead of `(i, i + head_dim/2)`.
    pub interleaved: bool,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| {
                let p = theta.powf((2 * i) as f64 / head_dim as f64) as f32;
                1.0f32 / p
            })
            .collect();
        Rope {
            head_dim,
            inv_freq,
            interleaved: false,
        }
    }

    /// The same frequencies with the interleaved pair layout.
    pub fn with_interleaved(self, interleaved: bool) -> Self {
        Rope {
            interleaved,
            ..self
        }
    }

    /// The two dimensions of pair `i` within a head.
    #[inline]
    pub fn pair(&self, i: usize) -> (usize, usize) {
        if self.interleaved {
            (2 * i, 2 * i + 1)
        } else {
            (i, i + self.head_dim / 2)
        }
    }
}
