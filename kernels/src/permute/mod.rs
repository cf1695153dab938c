//! `permute`: group the routed (token, slot) pairs by expert, the "align" step before a grouped
//! expert GEMM.
//!
//! - `expert_ids`: `[n_tokens, top_k]`
//! - [`Dispatch::expert_offsets`]: `[n_experts + 1]`; expert `e` owns sorted rows
//!   `offsets[e]..offsets[e + 1]`
//! - [`Dispatch::sorted_slots`]: `[n_tokens · top_k]`, slot `t · top_k + j`, grouped by expert,
//!   tokens ascending within an expert (stable)
//! - [`Dispatch::slot_rows`]: `[n_tokens · top_k]`, the inverse: the sorted row of each slot

use crate::scratch::refill;
use crate::KernelError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    pub top_k: usize,
    pub expert_offsets: Vec<u32>,
    pub sorted_slots: Vec<u32>,
    pub slot_rows: Vec<u32>,
}

/// No experts and no rows.
impl Default for Dispatch {
    fn default() -> Self {
        Dispatch {
            top_k: 1,
            expert_offsets: vec![0],
            sorted_slots: Vec::new(),
            slot_rows: Vec::new(),
        }
    }
}

impl Dispatch {
    pub fn n_experts(&self) -> usize {
        self.expert_offsets.len() - 1
    }

    /// Sorted rows of expert `e`.
    pub fn rows_of(&self, e: usize) -> std::ops::Range<usize> {
        self.expert_offsets[e] as usize..self.expert_offsets[e + 1] as usize
    }

    /// The token that a sorted row came from.
    pub fn token_of_row(&self, row: usize) -> usize {
        self.sorted_slots[row] as usize / self.top_k
    }
}

/// Counting sort by expert: O(n_tokens · top_k).
pub fn run(expert_ids: &[u32], n_experts: usize, top_k: usize) -> Result<Dispatch, KernelError> {
    let mut d = Dispatch::default();
    run_into(expert_ids, n_experts, top_k, &mut d)?;
    Ok(d)
}

/// [`run`] into `d`, reusing its vectors (a caller that keeps `d` allocates nothing once they
/// are large enough). On an error `d` is left an empty dispatch.
pub fn run_into(
    expert_ids: &[u32],
    n_experts: usize,
    top_k: usize,
    d: &mut Dispatch,
) -> Result<(), KernelError> {
    let invalid = |d: &mut Dispatch, message: String| {
        *d = Dispatch::default();
        Err(KernelError::Invalid {
            op: "permute",
            message,
        })
    };
    if top_k == 0 || expert_ids.len() % top_k != 0 {
        return invalid(
            d,
            format!("{} expert ids for top_k {top_k}", expert_ids.len()),
        );
    }
    d.top_k = top_k;
    let offsets = &mut d.expert_offsets;
    refill(offsets, n_experts + 1, 0);
    for &e in expert_ids {
        if e as usize >= n_experts {
            return invalid(d, format!("expert id {e} with {n_experts} experts"));
        }
        offsets[e as usize + 1] += 1;
    }
    for e in 0..n_experts {
        offsets[e + 1] += offsets[e];
    }
    refill(&mut d.sorted_slots, expert_ids.len(), 0);
    refill(&mut d.slot_rows, expert_ids.len(), 0);
    // offsets[e] serves as expert e's cursor, which ends at e's end (the next start); shifting
    // the ends up by one expert gives the starts back.
    for (slot, &e) in expert_ids.iter().enumerate() {
        let row = offsets[e as usize];
        offsets[e as usize] += 1;
        d.sorted_slots[row as usize] = slot as u32;
        d.slot_rows[slot] = row;
    }
    offsets.copy_within(0..n_experts, 1);
    offsets[0] = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_by_expert_stably_and_inverts() {
        let ids = [2, 0, 1, 2, 2, 3];
        let d = super::run(&ids, 4, 2).unwrap();
        assert_eq!(d.expert_offsets, vec![0, 1, 2, 5, 6]);
        assert_eq!(d.sorted_slots, vec![1, 2, 0, 3, 4, 5]);
        for (slot, &row) in d.slot_rows.iter().enumerate() {
            assert_eq!(d.sorted_slots[row as usize] as usize, slot);
        }
        assert_eq!(d.token_of_row(3), 1);
        assert!(super::run(&[5], 4, 1).is_err());
    }

    #[test]
    fn a_reused_dispatch_is_the_fresh_one() {
        let mut d = super::run(&[1, 0, 3, 3, 2, 0, 1, 1], 4, 2).unwrap();
        for (ids, experts, k) in [
            (vec![2u32, 0, 1, 2, 2, 3], 4, 2),
            (vec![0, 0], 1, 1),
            (vec![4, 1, 1, 0, 4, 2, 3, 3, 0], 6, 3),
        ] {
            super::run_into(&ids, experts, k, &mut d).unwrap();
            assert_eq!(d, super::run(&ids, experts, k).unwrap());
        }
        assert!(super::run_into(&[7], 4, 1, &mut d).is_err());
        assert_eq!(d, super::Dispatch::default());
        assert_eq!(d.n_experts(), 0);
    }
}
