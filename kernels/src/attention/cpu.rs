use super::{Attention, AttnSeq};
use crate::{check_len, KernelError, SendPtr};
use rayon::prelude::*;

fn check(p: &Attention, q: &[f32], seqs: &[AttnSeq], out: &[f32]) -> Result<(), KernelError> {
    if p.n_kv_heads == 0 || p.n_heads % p.n_kv_heads != 0 {
        return Err(KernelError::Invalid {
            op: "attention",
            message: format!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                p.n_heads, p.n_kv_heads
            ),
        });
    }
    let q_width = p.n_heads * p.head_dim;
    let kv_width = p.n_kv_heads * p.head_dim;
    check_len("attention", "out", out.len(), q.len())?;
    for s in seqs {
        if s.k.len() != s.v.len() || s.k.len() % kv_width != 0 || s.k.len() / kv_width < s.n_new {
            return Err(KernelError::Invalid {
                op: "attention",
                message: format!(
                    "cache of {} / {} elements does not hold {} new rows of width {kv_width}",
                    s.k.len(),
                    s.v.len(),
                    s.n_new
                ),
            });
        }
        if (s.q_row + s.n_new) * q_width > q.len() {
            return Err(KernelError::Invalid {
                op: "attention",
                message: format!(
                    "rows {}..{} lie past the end of q",
                    s.q_row,
                    s.q_row + s.n_new
                ),
            });
        }
    }
    Ok(())
}

/// Reference: materialised scores, f64 softmax.
pub fn reference(
    p: &Attention,
    q: &[f32],
    seqs: &[AttnSeq],
    out: &mut [f32],
) -> Result<(), KernelError> {
    check(p, q, seqs, out)?;
    let (hd, group) = (p.head_dim, p.n_heads / p.n_kv_heads);
    let (q_width, kv_width) = (p.n_heads * hd, p.n_kv_heads * hd);
    for s in seqs {
        let n_ctx = s.k.len() / kv_width;
        for i in 0..s.n_new {
            let pos = n_ctx - s.n_new + i;
            let row = s.q_row + i;
            for h in 0..p.n_heads {
                let kvh = h / group;
                let qv = &q[row * q_width + h * hd..row * q_width + (h + 1) * hd];
                let first = p.first_visible(pos);
                let scores: Vec<f64> = (first..=pos)
                    .map(|j| {
                        let kv = &s.k[j * kv_width + kvh * hd..j * kv_width + (kvh + 1) * hd];
                        qv.iter()
                            .zip(kv)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * p.scale as f64
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for d in 0..hd {
                    let mut acc = 0f64;
                    for (jj, sc) in scores.iter().enumerate() {
                        let j = first + jj;
                        acc += (sc - m).exp() / z * s.v[j * kv_width + kvh * hd + d] as f64;
                    }
                    out[row * q_width + h * hd + d] = acc as f32;
                }
            }
        }
    }
    Ok(())
}

/// Online softmax over the visible keys (never the whole score matrix), one task per
/// (token, head), all sequences in one parallel loop.
pub fn run(p: &Attention, q: &[f32], seqs: &[AttnSeq], out: &mut [f32]) -> Result<(), KernelError> {
    check(p, q, seqs, out)?;
    let (hd, group) = (p.head_dim, p.n_heads / p.n_kv_heads);
    let (q_width, kv_width) = (p.n_heads * hd, p.n_kv_heads * hd);
    // (sequence, token within it) for every new token.
    let items: Vec<(usize, usize)> = seqs
        .iter()
        .enumerate()
        .flat_map(|(si, s)| (0..s.n_new).map(move |i| (si, i)))
        .collect();
    let op = SendPtr(out.as_mut_ptr());
    let n_items = items.len() * p.n_heads;
    let work = |w: usize| {
        let (si, i) = items[w / p.n_heads];
        let h = w % p.n_heads;
        let s = &seqs[si];
        let n_ctx = s.k.len() / kv_width;
        let pos = n_ctx - s.n_new + i;
        let row = s.q_row + i;
        let kvh = h / group;
        let qv = &q[row * q_width + h * hd..row * q_width + (h + 1) * hd];
        let mut acc = [0f32; 256];
        let mut acc_vec;
        let acc: &mut [f32] = if hd <= 256 {
            &mut acc[..hd]
        } else {
            acc_vec = vec![0f32; hd];
            &mut acc_vec
        };
        let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
        for j in p.first_visible(pos)..=pos {
            let base = j * kv_width + kvh * hd;
            let sc = crate::dot::dot(qv, crate::WeightData::F32(&s.k[base..base + hd])) * p.scale;
            let vv = &s.v[base..base + hd];
            if sc > m {
                let c = (m - sc).exp();
                l *= c;
                for a in acc.iter_mut() {
                    *a *= c;
                }
                m = sc;
            }
            let e = (sc - m).exp();
            l += e;
            crate::dot::axpy(e, vv, acc);
        }
        let inv = 1.0 / l;
        for (d, a) in acc.iter().enumerate() {
            // SAFETY: each (row, h) pair belongs to exactly one work item; the index is within
            // out, whose length equals q's (checked).
            unsafe { *op.at(row * q_width + h * hd + d) = a * inv };
        }
    };
    if n_items < 4 {
        (0..n_items).for_each(work);
    } else {
        (0..n_items).into_par_iter().for_each(work);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn online_softmax_matches_reference_with_gqa_window_and_ragged_batch() {
        for window in [None, Some(3)] {
            let p = Attention {
                n_heads: 4,
                n_kv_heads: 2,
                head_dim: 8,
                scale: 8f32.powf(-0.5),
                sliding_window: window,
            };
            let kvw = 16;
            let (ka, va) = (data(7 * kvw, 1), data(7 * kvw, 2));
            let (kb, vb) = (data(4 * kvw, 3), data(4 * kvw, 4));
            // Sequence a: 7 cached, 5 new (prefill continuation); b: 4 cached, 1 new (decode).
            let seqs = [
                AttnSeq {
                    q_row: 0,
                    n_new: 5,
                    k: &ka,
                    v: &va,
                },
                AttnSeq {
                    q_row: 5,
                    n_new: 1,
                    k: &kb,
                    v: &vb,
                },
            ];
            let q = data(6 * 32, 5);
            let mut want = vec![0f32; q.len()];
            let mut got = vec![0f32; q.len()];
            reference(&p, &q, &seqs, &mut want).unwrap();
            run(&p, &q, &seqs, &mut got).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5, "{window:?} element {i}: {g} vs {w}");
            }
        }
    }
}
