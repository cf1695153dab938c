use super::ExpertMats;
use crate::linear::cpu as linear;
use crate::permute::Dispatch;
use crate::scratch::{refill, release_if_large, with_scratch};
use crate::{check_len, KernelError, SendPtr};

fn check(
    x: &[f32],
    hidden: usize,
    d: &Dispatch,
    experts: &[ExpertMats],
    out: &[f32],
) -> Result<(), KernelError> {
    check_len("expert_ffn", "experts", experts.len(), d.n_experts())?;
    check_len(
        "expert_ffn",
        "out",
        out.len(),
        d.sorted_slots.len() * hidden,
    )?;
    if hidden == 0 || x.len() % hidden != 0 || x.len() / hidden * d.top_k != d.sorted_slots.len() {
        return Err(KernelError::Invalid {
            op: "expert_ffn",
            message: format!(
                "x has {} elements for hidden {hidden} and {} routed rows",
                x.len(),
                d.sorted_slots.len()
            ),
        });
    }
    for (e, m) in experts.iter().enumerate() {
        let ffn = m.w1.rows;
        if m.w1.cols != hidden
            || m.w3.rows != ffn
            || m.w3.cols != hidden
            || m.w2.rows != hidden
            || m.w2.cols != ffn
        {
            return Err(KernelError::Invalid {
                op: "expert_ffn",
                message: format!("expert {e}: matrices do not fit hidden {hidden}, ffn {ffn}"),
            });
        }
    }
    Ok(())
}

/// Gathers the rows of expert `e` into `[count, hidden]`.
fn gather(x: &[f32], hidden: usize, d: &Dispatch, e: usize, xs: &mut Vec<f32>) {
    xs.clear();
    for r in d.rows_of(e) {
        let t = d.token_of_row(r);
        xs.extend_from_slice(&x[t * hidden..(t + 1) * hidden]);
    }
}

/// Reference: the reference linear products, expert by expert.
pub fn reference(
    x: &[f32],
    hidden: usize,
    d: &Dispatch,
    experts: &[ExpertMats],
    out: &mut [f32],
) -> Result<(), KernelError> {
    check(x, hidden, d, experts, out)?;
    let mut xs = Vec::new();
    for (e, m) in experts.iter().enumerate() {
        let rows = d.rows_of(e);
        if rows.is_empty() {
            continue;
        }
        gather(x, hidden, d, e, &mut xs);
        let c = rows.len();
        let mut act = vec![0f32; c * m.w1.rows];
        linear::swiglu_reference(&xs, c, &m.w1, &m.w3, &mut act)?;
        linear::reference(
            &act,
            c,
            &m.w2,
            &mut out[rows.start * hidden..rows.end * hidden],
        )?;
    }
    Ok(())
}

/// The buffers of one [`run`]: the routed rows' inputs, their activations, where each expert's
/// activations start, and the row blocks of a pass.
#[derive(Default)]
struct Scratch {
    xs: Vec<f32>,
    act: Vec<f32>,
    act_at: Vec<usize>,
    blocks: Vec<linear::RowBlock>,
}

thread_local! {
    /// Kept per thread across calls, so that once warm a decode step allocates nothing here.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

impl Scratch {
    fn shrink(&mut self) {
        release_if_large(&mut self.xs);
        release_if_large(&mut self.act);
    }
}

/// Fast: the gate/up pass of every routed expert in one parallel region, then the down pass of
/// every routed expert in another (two fork/joins per layer whatever the routing), each balanced
/// over blocks of output rows; every row is computed exactly as the per-expert kernels compute it.
pub fn run(
    x: &[f32],
    hidden: usize,
    d: &Dispatch,
    experts: &[ExpertMats],
    out: &mut [f32],
) -> Result<(), KernelError> {
    check(x, hidden, d, experts, out)?;
    with_scratch(&SCRATCH, |scratch| {
        run_with(x, hidden, d, experts, out, scratch);
        scratch.shrink();
    });
    Ok(())
}

fn run_with(
    x: &[f32],
    hidden: usize,
    d: &Dispatch,
    experts: &[ExpertMats],
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let Scratch {
        xs,
        act,
        act_at,
        blocks,
    } = scratch;
    let routed = d.sorted_slots.len();
    // Every routed row's input, in sorted-row order: expert e's rows are `d.rows_of(e)`.
    xs.clear();
    for r in 0..routed {
        let t = d.token_of_row(r);
        xs.extend_from_slice(&x[t * hidden..(t + 1) * hidden]);
    }
    // Expert e's activations `[count, ffn_e]` start at act_at[e].
    act_at.clear();
    let mut act_len = 0;
    for (e, m) in experts.iter().enumerate() {
        act_at.push(act_len);
        act_len += d.rows_of(e).len() * m.w1.rows;
    }
    refill(act, act_len, 0.0);
    let used = || {
        experts
            .iter()
            .enumerate()
            .filter(|(e, _)| !d.rows_of(*e).is_empty())
    };
    let (xs, act_at) = (&*xs, &*act_at);
    let ap = SendPtr(act.as_mut_ptr());
    linear::row_blocks_into(blocks, used().map(|(e, m)| (e, m.w1.rows)));
    linear::for_blocks(blocks, |b| {
        let (m, rows) = (&experts[b.mat], d.rows_of(b.mat));
        let xe = &xs[rows.start * hidden..rows.end * hidden];
        // SAFETY: expert b.mat's activations are `[rows.len(), ffn]` at act_at[b.mat], inside act;
        // blocks of one expert are disjoint row ranges.
        unsafe {
            linear::swiglu_rows(
                xe,
                rows.len(),
                &m.w1,
                &m.w3,
                b.start,
                b.end,
                SendPtr(ap.at(act_at[b.mat])),
            )
        };
    });
    let act = &*act;
    let op = SendPtr(out.as_mut_ptr());
    linear::row_blocks_into(blocks, used().map(|(e, m)| (e, m.w2.rows)));
    linear::for_blocks(blocks, |b| {
        let (m, rows) = (&experts[b.mat], d.rows_of(b.mat));
        let ffn = m.w1.rows;
        let ae = &act[act_at[b.mat]..act_at[b.mat] + rows.len() * ffn];
        linear::block_dots(ae, rows.len(), &m.w2, b.start, b.end, |t, r, v| {
            // SAFETY: sorted row rows.start + t belongs to this expert only, output row r to this
            // block only; out holds routed · hidden elements (checked).
            unsafe { *op.at((rows.start + t) * hidden + r) = v };
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mat, WeightData};
    use half::bf16;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn fused_regions_give_the_bits_of_expert_by_expert_kernels() {
        let (hidden, ffn, n_experts, top_k) = (48, 72, 4, 2);
        let ws: Vec<Vec<bf16>> = (0..n_experts * 3)
            .map(|i| {
                data(hidden * ffn, 100 + i as u64)
                    .iter()
                    .map(|&v| bf16::from_f32(v))
                    .collect()
            })
            .collect();
        let mats: Vec<ExpertMats> = (0..n_experts)
            .map(|e| ExpertMats {
                w1: Mat::new(WeightData::BF16(&ws[3 * e]), ffn, hidden),
                w3: Mat::new(WeightData::BF16(&ws[3 * e + 1]), ffn, hidden),
                w2: Mat::new(WeightData::BF16(&ws[3 * e + 2]), hidden, ffn),
            })
            .collect();
        // One token (decode), five tokens with expert 3 unused, and one token again on the
        // buffers the larger call left.
        for ids in [
            vec![2u32, 0],
            vec![1, 0, 1, 2, 0, 2, 1, 0, 2, 1],
            vec![3, 1],
        ] {
            let n = ids.len() / top_k;
            let x = data(n * hidden, 7);
            let d = crate::permute::run(&ids, n_experts, top_k).unwrap();
            let mut got = vec![0f32; n * top_k * hidden];
            run(&x, hidden, &d, &mats, &mut got).unwrap();
            let mut want = vec![0f32; got.len()];
            let mut xs = Vec::new();
            for (e, m) in mats.iter().enumerate() {
                let rows = d.rows_of(e);
                if rows.is_empty() {
                    continue;
                }
                gather(&x, hidden, &d, e, &mut xs);
                let mut act = vec![0f32; rows.len() * ffn];
                linear::swiglu(&xs, rows.len(), &m.w1, &m.w3, &mut act).unwrap();
                let o = &mut want[rows.start * hidden..rows.end * hidden];
                linear::run(&act, rows.len(), &m.w2, o).unwrap();
            }
            assert_eq!(got, want);
            let mut refr = vec![0f32; got.len()];
            reference(&x, hidden, &d, &mats, &mut refr).unwrap();
            for (g, r) in got.iter().zip(&refr) {
                assert!((g - r).abs() <= 1e-4 * (1.0 + r.abs()), "{g} vs {r}");
            }
        }
    }
}
