use super::Rope;
use crate::{check_len, KernelError};

fn check(p: &Rope, x: &[f32], positions: &[u32]) -> Result<usize, KernelError> {
    let n = positions.len();
    if n == 0 || x.len() % (n * p.head_dim.max(1)) != 0 || p.head_dim % 2 != 0 {
        return Err(KernelError::Invalid {
            op: "rope",
            message: format!(
                "x has {} elements, not n_tokens {n} × a multiple of the even head_dim {}",
                x.len(),
                p.head_dim
            ),
        });
    }
    check_len("rope", "inv_freq", p.inv_freq.len(), p.head_dim / 2)?;
    Ok(x.len() / n / p.head_dim)
}

/// Rotates every head of every token in place.
pub fn run(p: &Rope, x: &mut [f32], positions: &[u32]) -> Result<(), KernelError> {
    let n_heads = check(p, x, positions)?;
    let half = p.head_dim / 2;
    let mut cos = vec![0f32; half];
    let mut sin = vec![0f32; half];
    let row = n_heads * p.head_dim;
    for (t, &pos) in positions.iter().enumerate() {
        for i in 0..half {
            let angle = pos as f32 * p.inv_freq[i];
            cos[i] = (angle as f64).cos() as f32;
            sin[i] = (angle as f64).sin() as f32;
        }
        for h in 0..n_heads {
            let v = &mut x[t * row + h * p.head_dim..t * row + (h + 1) * p.head_dim];
            for i in 0..half {
                let (a, b) = (v[i], v[i + half]);
                v[i] = a * cos[i] - b * sin[i];
                v[i + half] = b * cos[i] + a * sin[i];
            }
        }
    }
    Ok(())
}

/// The rotation is elementwise per token and head; the fast path is the same loop.
pub use run as reference;
