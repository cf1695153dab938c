use super::Rope;
use crate::{check_len, KernelError};

fn check(p: &Rope, x: &[f32], positions: &[u32]) -> Result<(), KernelError> {
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
    check_len("rope", "inv_freq", p.inv_freq.len(), p.head_dim / 2)
}

/// Rotates every head of every token in place.
pub fn run(p: &Rope, x: &mut [f32], positions: &[u32]) -> Result<(), KernelError> {
    run_many(p, &mut [x], positions)
}

/// Half head widths whose angles fit the stack (head_dim up to 256).
const STACK_HALF: usize = 128;

/// [`run`] on each of `xs` (q and k of one layer) over the same positions: a position's angles
/// are computed once for all of them. Allocates nothing for heads up to 256 wide.
pub fn run_many(p: &Rope, xs: &mut [&mut [f32]], positions: &[u32]) -> Result<(), KernelError> {
    for x in xs.iter() {
        check(p, x, positions)?;
    }
    let (dim, half) = (p.head_dim, p.head_dim / 2);
    let mut stack = [0f32; 2 * STACK_HALF];
    let mut heap = Vec::new();
    let angles = if half <= STACK_HALF {
        &mut stack[..2 * half]
    } else {
        heap.resize(2 * half, 0.0);
        &mut heap[..]
    };
    let (cos, sin) = angles.split_at_mut(half);
    let n = positions.len();
    for (t, &pos) in positions.iter().enumerate() {
        for i in 0..half {
            let angle = pos as f32 * p.inv_freq[i];
            cos[i] = (angle as f64).cos() as f32;
            sin[i] = (angle as f64).sin() as f32;
        }
        for x in xs.iter_mut() {
            let row = x.len() / n;
            for v in x[t * row..(t + 1) * row].chunks_exact_mut(dim) {
                if p.interleaved {
                    for (i, pair) in v.chunks_exact_mut(2).enumerate() {
                        let (a, b) = (pair[0], pair[1]);
                        pair[0] = a * cos[i] - b * sin[i];
                        pair[1] = b * cos[i] + a * sin[i];
                    }
                    continue;
                }
                for i in 0..half {
                    let (a, b) = (v[i], v[i + half]);
                    v[i] = a * cos[i] - b * sin[i];
                    v[i + half] = b * cos[i] + a * sin[i];
                }
            }
        }
    }
    Ok(())
}

/// The rotation is elementwise per token and head; the fast path is the same loop.
pub use run as reference;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_pairs_rotate_like_half_split_on_permuted_dims() {
        // Interleaved RoPE on x equals half-split RoPE on x with each head's dims permuted from
        // (0, 1, 2, 3, ...) to (0, 2, 4, ..., 1, 3, 5, ...) (llama.cpp's converter permutation).
        let hd = 16;
        let p = Rope::new(hd, 10000.0);
        let pi = p.clone().with_interleaved(true);
        let positions = [3u32, 100];
        let x: Vec<f32> = (0..2 * 2 * hd).map(|i| (i as f32 * 0.37).sin()).collect();
        let perm = |v: &[f32]| -> Vec<f32> {
            v.chunks(hd)
                .flat_map(|h| {
                    (0..hd / 2)
                        .map(|i| h[2 * i])
                        .chain((0..hd / 2).map(|i| h[2 * i + 1]))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let mut a = x.clone();
        run(&pi, &mut a, &positions).unwrap();
        let mut b = perm(&x);
        run(&p, &mut b, &positions).unwrap();
        assert_eq!(perm(&a), b);
        assert_eq!(pi.pair(3), (6, 7));
        assert_eq!(p.pair(3), (3, 11));
    }

    #[test]
    fn rotates_by_the_f64_angles_and_q_and_k_together_as_alone() {
        for head_dim in [8usize, 64, 320] {
            let p = Rope::new(head_dim, 10000.0);
            let positions = [0u32, 7, 4095];
            let (q_heads, k_heads) = (3, 1);
            let fill = |len: usize, seed: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| ((i * 37 + seed) % 101) as f32 / 50.0 - 1.0)
                    .collect()
            };
            let q0 = fill(positions.len() * q_heads * head_dim, 1);
            let k0 = fill(positions.len() * k_heads * head_dim, 2);
            let (mut q, mut k) = (q0.clone(), k0.clone());
            run_many(&p, &mut [&mut q, &mut k], &positions).unwrap();
            for (x0, x, heads) in [(&q0, &q, q_heads), (&k0, &k, k_heads)] {
                let mut alone = x0.clone();
                run(&p, &mut alone, &positions).unwrap();
                assert_eq!(
                    &alone, x,
                    "head_dim {head_dim}: together differs from alone"
                );
                let half = head_dim / 2;
                for (t, &pos) in positions.iter().enumerate() {
                    for h in 0..heads {
                        let at = (t * heads + h) * head_dim;
                        for i in 0..half {
                            let angle = (pos as f32 * p.inv_freq[i]) as f64;
                            let (a, b) = (x0[at + i] as f64, x0[at + i + half] as f64);
                            let want = [
                                a * angle.cos() - b * angle.sin(),
                                b * angle.cos() + a * angle.sin(),
                            ];
                            for (got, want) in [x[at + i], x[at + i + half]].into_iter().zip(want) {
                                assert!(
                                    (got as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                                    "head_dim {head_dim} position {pos} head {h} dim {i}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_mismatched_input_is_an_error_and_nothing_is_rotated() {
        let p = Rope::new(8, 10000.0);
        let mut q = vec![1f32; 16];
        let mut k = vec![1f32; 12];
        assert!(run_many(&p, &mut [&mut q, &mut k], &[3, 4]).is_err());
        assert!(q.iter().all(|&v| v == 1.0));
    }
}
