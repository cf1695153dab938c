//! `permute`: group the routed (token, slot) pairs by expert, the "align" step before a grouped
//! expert GEMM.
//!
//! - `expert_ids`: `[n_tokens, top_k]`
//! - [`Dispatch::expert_offsets`]: `[n_experts + 1]`; expert `e` owns sorted rows
//!   `offsets[e]..offsets[e + 1]`
//! - [`Dispatch::sorted_slots`]: `[n_tokens · top_k]`, slot `t · top_k + j`, grouped by expert,
//!   tokens ascending within an expert (stable)
//! - [`Dispatch::slot_rows`]: `[n_tokens · top_k]`, the inverse: the sorted row of each slot

use crate::KernelError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    pub top_k: usize,
    pub expert_offsets: Vec<u32>,
    pub sorted_slots: Vec<u32>,
    pub slot_rows: Vec<u32>,
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
    if top_k == 0 || expert_ids.len() % top_k != 0 {
        return Err(KernelError::Invalid {
            op: "permute",
            message: format!("{} expert ids for top_k {top_k}", expert_ids.len()),
        });
    }
    let mut offsets = vec![0u32; n_experts + 1];
    for &e in expert_ids {
        if e as usize >= n_experts {
            return Err(KernelError::Invalid {
                op: "permute",
                message: format!("expert id {e} with {n_experts} experts"),
            });
        }
        offsets[e as usize + 1] += 1;
    }
    for e in 0..n_experts {
        offsets[e + 1] += offsets[e];
    }
    let mut cursor = offsets.clone();
    let mut sorted_slots = vec![0u32; expert_ids.len()];
    let mut slot_rows = vec![0u32; expert_ids.len()];
    for (slot, &e) in expert_ids.iter().enumerate() {
        let row = cursor[e as usize];
        cursor[e as usize] += 1;
        sorted_slots[row as usize] = slot as u32;
        slot_rows[slot] = row;
    }
    Ok(Dispatch {
        top_k,
        expert_offsets: offsets,
        sorted_slots,
        slot_rows,
    })
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
}
