use super::{ExpertLoad, RouterTopK, Scoring};
use crate::{check_len, KernelError};

fn check(
    p: &RouterTopK,
    logits: &[f32],
    ids: &[u32],
    weights: &[f32],
    load: &ExpertLoad,
) -> Result<usize, KernelError> {
    if p.top_k == 0 || p.top_k > p.n_experts || load.n_experts != p.n_experts {
        return Err(KernelError::Invalid {
            op: "router_topk",
            message: format!(
                "top_k {} with {} experts (counters for {})",
                p.top_k, p.n_experts, load.n_experts
            ),
        });
    }
    if logits.len() % p.n_experts != 0 {
        return Err(KernelError::Invalid {
            op: "router_topk",
            message: format!(
                "logits has {} elements, not a multiple of {}",
                logits.len(),
                p.n_experts
            ),
        });
    }
    let n = logits.len() / p.n_experts;
    check_len("router_topk", "expert_ids", ids.len(), n * p.top_k)?;
    check_len("router_topk", "weights", weights.len(), n * p.top_k)?;
    Ok(n)
}

/// Routes every token; the counters of `load` grow by this batch.
pub fn run(
    p: &RouterTopK,
    logits: &[f32],
    expert_ids: &mut [u32],
    weights: &mut [f32],
    load: &mut ExpertLoad,
) -> Result<(), KernelError> {
    let n = check(p, logits, expert_ids, weights, load)?;
    let (e, k) = (p.n_experts, p.top_k);
    // Up to `ON_STACK` experts (Mixtral has 8) the per-token buffers live on the stack.
    const ON_STACK: usize = 64;
    let (mut probs_stack, mut order_stack) = ([0f32; ON_STACK], [0usize; ON_STACK]);
    let (mut probs_heap, mut order_heap) = (Vec::new(), Vec::new());
    let (probs, order) = if e <= ON_STACK {
        (&mut probs_stack[..e], &mut order_stack[..e])
    } else {
        probs_heap.resize(e, 0f32);
        order_heap.resize(e, 0usize);
        (&mut probs_heap[..], &mut order_heap[..])
    };
    for t in 0..n {
        let row = &logits[t * e..(t + 1) * e];
        // `probs` holds the scores the top-k ranks; `z` normalises them into a distribution for
        // the counters (a softmax's scores already sum to one).
        let z = match p.scoring {
            Scoring::Softmax => {
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mut z = 0f32;
                for (pr, &l) in probs.iter_mut().zip(row) {
                    *pr = (l - m).exp();
                    z += *pr;
                }
                for pr in probs.iter_mut() {
                    *pr /= z;
                }
                1.0
            }
            Scoring::Sigmoid => {
                let mut z = 0f32;
                for (pr, &l) in probs.iter_mut().zip(row) {
                    *pr = 1.0 / (1.0 + (-l).exp());
                    z += *pr;
                }
                z
            }
        };
        let mut entropy = 0f64;
        for (i, &pr) in probs.iter().enumerate() {
            let q = pr as f64 / z as f64;
            load.prob_mass[i] += q;
            if q > 0.0 {
                entropy -= q * q.ln();
            }
        }
        load.entropy_sum += entropy;
        // Selection by repeated max keeps ties on the lower id and costs O(k·E), E being small.
        order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
        for j in 0..k {
            let mut best = j;
            for c in j + 1..e {
                if probs[order[c]] > probs[order[best]]
                    || (probs[order[c]] == probs[order[best]] && order[c] < order[best])
                {
                    best = c;
                }
            }
            order.swap(j, best);
        }
        let top_sum: f32 = order[..k].iter().map(|&i| probs[i]).sum();
        for j in 0..k {
            let ex = order[j];
            expert_ids[t * k + j] = ex as u32;
            weights[t * k + j] = if p.renormalize {
                probs[ex] / top_sum
            } else {
                probs[ex]
            };
            load.expert_tokens[ex] += 1;
            for &other in &order[j + 1..k] {
                load.coselect[ex * e + other] += 1;
                load.coselect[other * e + ex] += 1;
            }
        }
        load.tokens += 1;
    }
    Ok(())
}

/// The routing is a few dozen flops per token; the fused pass is already the plain loop.
pub use run as reference;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_renormalises_and_counts() {
        let p = RouterTopK::softmax_renormalized(4, 2);
        // Token 0 prefers 2 then 0; token 1 prefers 3 then 2; token 2 has a tie between 1 and 3.
        let logits = [1.0, -1.0, 2.0, 0.0, 0.0, 0.0, 1.0, 3.0, 0.0, 1.0, -2.0, 1.0];
        let mut ids = [0u32; 6];
        let mut w = [0f32; 6];
        let mut load = ExpertLoad::new(4);
        run(&p, &logits, &mut ids, &mut w, &mut load).unwrap();
        assert_eq!(ids, [2, 0, 3, 2, 1, 3]);
        let want0 = 1.0 / (1.0 + (-1.0f32).exp());
        assert!((w[0] - want0).abs() < 1e-6 && (w[0] + w[1] - 1.0).abs() < 1e-6);
        assert_eq!(load.expert_tokens, vec![1, 1, 2, 2]);
        assert_eq!(load.tokens, 3);
        assert_eq!(load.coselect[2 * 4], 1);
        assert_eq!(load.coselect[3 * 4 + 2], 1);
        assert_eq!(load.coselect[3 * 4 + 1], 1);
        assert_eq!(load.coselect.iter().sum::<u64>(), 6);
        let mass: f64 = load.prob_mass.iter().sum();
        assert!((mass - 3.0).abs() < 1e-6);
    }

    #[test]
    fn more_experts_than_the_stack_holds_route_the_same_way() {
        // 100 experts: the buffers come from the heap; two tokens, the second with a tie.
        let p = RouterTopK::softmax_renormalized(100, 3);
        let mut logits = vec![0f32; 200];
        logits[70] = 3.0;
        logits[99] = 4.0;
        logits[5] = 2.0;
        logits[100 + 80] = 1.0;
        logits[100 + 64] = 1.0;
        logits[100 + 65] = 2.0;
        let (mut ids, mut w) = ([0u32; 6], [0f32; 6]);
        let mut load = ExpertLoad::new(100);
        run(&p, &logits, &mut ids, &mut w, &mut load).unwrap();
        assert_eq!(ids, [99, 70, 5, 65, 64, 80]);
        let z: f32 = [4.0f32, 3.0, 2.0].iter().map(|l| l.exp()).sum();
        for (j, l) in [4.0f32, 3.0, 2.0].into_iter().enumerate() {
            assert!((w[j] - l.exp() / z).abs() < 1e-6, "weight {j}: {}", w[j]);
        }
        assert_eq!(load.tokens, 2);
        assert_eq!(load.expert_tokens.iter().sum::<u64>(), 6);
    }

    #[test]
    fn raw_softmax_and_sigmoid_scores_are_not_renormalised_unless_asked() {
        let logits = [1.0f32, -1.0, 2.0, 0.0];
        let mut p = RouterTopK::softmax_renormalized(4, 2);
        p.renormalize = false;
        let (mut ids, mut w) = ([0u32; 2], [0f32; 2]);
        let mut load = ExpertLoad::new(4);
        run(&p, &logits, &mut ids, &mut w, &mut load).unwrap();
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert_eq!(ids, [2, 0]);
        assert!((w[0] - 2f32.exp() / z).abs() < 1e-6 && (w[1] - 1f32.exp() / z).abs() < 1e-6);

        let sig = |l: f32| 1.0 / (1.0 + (-l).exp());
        for renormalize in [false, true] {
            let p = RouterTopK {
                scoring: Scoring::Sigmoid,
                renormalize,
                ..p
            };
            let mut load = ExpertLoad::new(4);
            run(&p, &logits, &mut ids, &mut w, &mut load).unwrap();
            assert_eq!(ids, [2, 0]);
            let (a, b) = (sig(2.0), sig(1.0));
            let want = if renormalize {
                [a / (a + b), b / (a + b)]
            } else {
                [a, b]
            };
            assert!(
                (w[0] - want[0]).abs() < 1e-6 && (w[1] - want[1]).abs() < 1e-6,
                "{w:?}"
            );
            // The counters see the scores as a distribution.
            let mass: f64 = load.prob_mass.iter().sum();
            assert!((mass - 1.0).abs() < 1e-6, "{mass}");
        }
    }

    #[test]
    fn top_k_above_n_experts_is_an_error() {
        let p = RouterTopK::softmax_renormalized(2, 3);
        let mut load = ExpertLoad::new(2);
        assert!(run(&p, &[0.0; 2], &mut [0; 3], &mut [0.0; 3], &mut load).is_err());
    }
}
