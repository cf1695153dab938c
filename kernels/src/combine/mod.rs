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
    // Each element sums its slots in order from zero, then joins the residual; in chunks of
    // `CHUNK` elements, each slot's row is one contiguous (vectorisable) pass.
    const CHUNK: usize = 64;
    let body = |t: usize, res: &mut [f32]| {
        let slots = &d.slot_rows[t * k..(t + 1) * k];
        let gates = &weights[t * k..(t + 1) * k];
        for (c, res) in res.chunks_mut(CHUNK).enumerate() {
            let h0 = c * CHUNK;
            let mut acc = [0f32; CHUNK];
            let acc = &mut acc[..res.len()];
            for (&row, &g) in slots.iter().zip(gates) {
                let from = row as usize * hidden + h0;
                for (a, &e) in acc.iter_mut().zip(&expert_out[from..from + res.len()]) {
                    *a += g * e;
                }
            }
            for (r, a) in res.iter_mut().zip(acc.iter()) {
                *r += a;
            }
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

    #[test]
    fn chunked_sums_are_the_per_element_sums_bit_for_bit() {
        // Wider than a chunk and not a multiple of it; enough tokens for the parallel path.
        let (tokens, k, experts, hidden) = (20usize, 2usize, 5u32, 150usize);
        let ids: Vec<u32> = (0..tokens * k)
            .map(|i| (i as u32 * 7 + i as u32 / 2) % experts)
            .collect();
        let d = crate::permute::run(&ids, experts as usize, k).unwrap();
        let expert_out: Vec<f32> = (0..tokens * k * hidden)
            .map(|i| ((i * 31 + 5) % 113) as f32 / 17.0 - 3.0)
            .collect();
        let weights: Vec<f32> = (0..tokens * k)
            .map(|i| 0.1 + (i % 9) as f32 / 10.0)
            .collect();
        let residual: Vec<f32> = (0..tokens * hidden)
            .map(|i| (i % 13) as f32 / 3.0)
            .collect();
        let mut want = residual.clone();
        for t in 0..tokens {
            for h in 0..hidden {
                let mut acc = 0f32;
                for j in 0..k {
                    let row = d.slot_rows[t * k + j] as usize;
                    acc += weights[t * k + j] * expert_out[row * hidden + h];
                }
                want[t * hidden + h] += acc;
            }
        }
        let mut got = residual;
        super::run(&expert_out, hidden, &d, &weights, &mut got).unwrap();
        assert_eq!(got, want);
    }
}
