//! `embedding`: `out[t] = table[ids[t]]`, widened to f32.
//!
//! - `table`: `[vocab, hidden]` checkpoint dtype
//! - `ids`: `[n_tokens]`, each `< vocab` (checked)
//! - `out`: `[n_tokens, hidden]` f32

pub mod cuda;

use crate::{check_len, KernelError, Mat};

pub fn run(table: &Mat, ids: &[u32], out: &mut [f32]) -> Result<(), KernelError> {
    check_len("embedding", "out", out.len(), ids.len() * table.cols)?;
    for (t, &id) in ids.iter().enumerate() {
        if id as usize >= table.rows {
            return Err(KernelError::Invalid {
                op: "embedding",
                message: format!(
                    "token id {id} is outside the vocabulary (size {})",
                    table.rows
                ),
            });
        }
        table.data.to_f32_into(
            id as usize * table.cols,
            &mut out[t * table.cols..(t + 1) * table.cols],
        );
    }
    Ok(())
}
