use super::ExpertMats;
use crate::linear::cpu as linear;
use crate::permute::Dispatch;
use crate::{check_len, KernelError};

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

/// Fast: per expert with rows, one fused gate/up pass and one down pass, each parallel over
/// output rows.
pub fn run(
    x: &[f32],
    hidden: usize,
    d: &Dispatch,
    experts: &[ExpertMats],
    out: &mut [f32],
) -> Result<(), KernelError> {
    check(x, hidden, d, experts, out)?;
    let mut xs = Vec::new();
    let mut act = Vec::new();
    for (e, m) in experts.iter().enumerate() {
        let rows = d.rows_of(e);
        if rows.is_empty() {
            continue;
        }
        gather(x, hidden, d, e, &mut xs);
        let c = rows.len();
        act.resize(c * m.w1.rows, 0.0);
        linear::swiglu(&xs, c, &m.w1, &m.w3, &mut act)?;
        linear::run(
            &act,
            c,
            &m.w2,
            &mut out[rows.start * hidden..rows.end * hidden],
        )?;
    }
    Ok(())
}
