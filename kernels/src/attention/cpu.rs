use super::{Attention, AttnSeq};
use crate::{check_len, KernelError, SendPtr};

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

/// Keys per block of the online softmax (their scores live on the stack).
const KEY_BLOCK: usize = 64;

/// `n` elements set to `fill`: from `stack` when it is long enough, else from `heap`.
fn scratch<'a>(stack: &'a mut [f32], heap: &'a mut Vec<f32>, n: usize, fill: f32) -> &'a mut [f32] {
    let buf = if n <= stack.len() {
        &mut stack[..n]
    } else {
        heap.resize(n, 0.0);
        heap.as_mut_slice()
    };
    buf.fill(fill);
    buf
}

/// Online softmax over the visible keys (never the whole score matrix), one task per
/// (token, KV head), all sequences in one parallel loop.
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
    // One task per (token, KV head): the query heads that share a KV head read each block of
    // keys and values while it is in L1.
    let n_items = items.len() * p.n_kv_heads;
    let work = |w: usize| {
        let (si, i) = items[w / p.n_kv_heads];
        let kvh = w % p.n_kv_heads;
        let s = &seqs[si];
        let n_ctx = s.k.len() / kv_width;
        let pos = n_ctx - s.n_new + i;
        let row = s.q_row + i;
        let query = |g: usize| {
            let h = kvh * group + g;
            &q[row * q_width + h * hd..row * q_width + (h + 1) * hd]
        };
        // Per query head: running maximum, sum and numerator-weighted values; a block's scores.
        let (mut acc_stack, mut acc_heap) = ([0f32; 2048], Vec::new());
        let accs = scratch(&mut acc_stack, &mut acc_heap, group * hd, 0.0);
        let (mut score_stack, mut score_heap) = ([0f32; 8 * KEY_BLOCK], Vec::new());
        let scores = scratch(&mut score_stack, &mut score_heap, group * KEY_BLOCK, 0.0);
        let (mut ml_stack, mut ml_heap) = ([0f32; 16], Vec::new());
        let ml = scratch(&mut ml_stack, &mut ml_heap, 2 * group, 0.0);
        let (ms, ls) = ml.split_at_mut(group);
        ms.fill(f32::NEG_INFINITY);
        // Online softmax over blocks of keys: a block's scores, one rescale of the running sum
        // when its maximum is new, then its numerators in one vectorised pass.
        let mut j0 = p.first_visible(pos);
        while j0 <= pos {
            let j1 = (j0 + KEY_BLOCK).min(pos + 1);
            let len = j1 - j0;
            let (k_at, v_at) = (
                &s.k[j0 * kv_width + kvh * hd..],
                &s.v[j0 * kv_width + kvh * hd..],
            );
            for g in 0..group {
                let acc = &mut accs[g * hd..(g + 1) * hd];
                let block = &mut scores[g * KEY_BLOCK..g * KEY_BLOCK + len];
                let block_max = crate::dot::scaled_scores(query(g), k_at, kv_width, p.scale, block);
                if block_max > ms[g] {
                    let c = (ms[g] - block_max).exp();
                    ls[g] *= c;
                    for a in acc.iter_mut() {
                        *a *= c;
                    }
                    ms[g] = block_max;
                }
                ls[g] += crate::dot::exp_shifted(block, ms[g]);
                // The block's values are in L1 after the first head of the group.
                crate::dot::accumulate_rows(block, v_at, kv_width, acc);
            }
            j0 = j1;
        }
        for g in 0..group {
            let h = kvh * group + g;
            let inv = 1.0 / ls[g];
            for (d, a) in accs[g * hd..(g + 1) * hd].iter().enumerate() {
                // SAFETY: each (row, h) pair belongs to exactly one work item; the index is
                // within out, whose length equals q's (checked).
                unsafe { *op.at(row * q_width + h * hd + d) = a * inv };
            }
        }
    };
    crate::team::parallel_for(n_items, work);
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

    /// Contexts of several key blocks (a partial last one), the window cutting into the first,
    /// scores large enough that later blocks raise the running maximum: every element within
    /// 1e-5 of the f64 reference.
    #[test]
    fn long_contexts_over_several_key_blocks_match_reference() {
        // The second shape needs more scratch than the stack buffers hold.
        for (window, n_heads, hd) in [(None, 4, 64), (Some(100), 4, 64), (Some(100), 16, 160)] {
            let p = Attention {
                n_heads,
                n_kv_heads: 1,
                head_dim: hd,
                scale: (hd as f32).powf(-0.5),
                sliding_window: window,
            };
            let ctx = 3 * KEY_BLOCK + 7;
            // Keys grow along the context, so the maximum moves to later blocks.
            let k: Vec<f32> = data(ctx * hd, 7)
                .iter()
                .enumerate()
                .map(|(i, v)| v * (1.0 + 3.0 * (i / hd) as f32 / ctx as f32))
                .collect();
            let v = data(ctx * hd, 8);
            let seqs = [AttnSeq {
                q_row: 0,
                n_new: 9,
                k: &k,
                v: &v,
            }];
            let q: Vec<f32> = data(9 * n_heads * hd, 9).iter().map(|x| 4.0 * x).collect();
            let mut want = vec![0f32; q.len()];
            let mut got = vec![f32::NAN; q.len()];
            reference(&p, &q, &seqs, &mut want).unwrap();
            run(&p, &q, &seqs, &mut got).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5, "{window:?} element {i}: {g} vs {w}");
            }
        }
    }
}
