//! `combine`: weighted un-permute of the expert outputs back to token order, added to the residual.
//!
//! - `expert_out`: `[n_tokens · top_k, hidden]` f32 in sorted-row order (from `expert_ffn`)
//! - `weights`: `[n_tokens, top_k]` routing weights
//! - `residual`: `[n_tokens, hidden]`, `residual[t] += Σ_j weights[t, j] · expert_out[slot_rows[t·top_k + j]]`,
//!   the sum over `j` formed in f32 first (as transformers' grouped experts do), then added.

pub mod cuda;

use crate::permute::Dispatch;
use crate::{check_len, KernelError};

pub fn run(
    expert_out: &[f32],
    hidden: usize,
    d: &Dispatch,
    weights: &[f32],
    residual: &mut [f32],
) -> Result<(), KernelError> {
    let k = d.top_k;
    check_len("combine", "weights", weights.len(), d.slot_rows.len())?;
    check_len(
        "combine",
        "expert_out",
        expert_out.len(),
        d.slot_rows.len() * hidden,
    )?;
    check_len(
        "combine",
        "residual",
        residual.len(),
        d.slot_rows.len() / k * hidden,
    )?;
    let body = |t: usize, res: &mut [f32]| {
        for h in 0..hidden {
            let mut acc = 0f32;
            for j in 0..k {
                let row = d.slot_rows[t * k + j] as usize;
                acc += weights[t * k + j] * expert_out[row * hidden + h];
            }
            res[h] += acc;
        }
    };
    if residual.len() / hidden.max(1) < 16 {
        for (t, res) in residual.chunks_mut(hidden).enumerate() {
            body(t, res);
        }
    } else {
        crate::team::parallel_for_rows(residual, hidden, body);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn weighted_unpermute() {
        // 2 tokens, top-2, hidden 1; token 0 → experts (1, 0), token 1 → (1, 2).
        let d = crate::permute::run(&[1, 0, 1, 2], 3, 2).unwrap();
        // sorted rows: e0: slot1; e1: slot0, slot2; e2: slot3.
        let expert_out = [10.0, 20.0, 30.0, 40.0];
        let weights = [0.75, 0.25, 0.5, 0.5];
        let mut res = [1.0, 2.0];
        super::run(&expert_out, 1, &d, &weights, &mut res).unwrap();
        assert_eq!(
            res,
            [
                1.0 + 0.75 * 20.0 + 0.25 * 10.0,
                2.0 + 0.5 * 30.0 + 0.5 * 40.0
            ]
        );
    }
}
