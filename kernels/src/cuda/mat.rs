//! Weights on the device in their checkpoint dtype.

use super::{DevBuf, Gpu, GpuError, GpuResult};
use crate::{WeightDType, WeightData};
use std::sync::Arc;

/// A row-major matrix `[rows, cols]`, or `n` of them stacked (`rows` counts all of them).
pub struct DevMat {
    pub buf: DevBuf,
    pub dtype: WeightDType,
    pub rows: usize,
    pub cols: usize,
}

fn bytes_of<'a>(d: &WeightData<'a>) -> GpuResult<&'a [u8]> {
    Ok(match *d {
        WeightData::F32(s) => bytemuck::cast_slice(s),
        WeightData::BF16(s) => bytemuck::cast_slice(s),
        WeightData::F16(s) => bytemuck::cast_slice(s),
        WeightData::Quant(q) => {
            return Err(GpuError(format!(
                "{} weights are not supported on CUDA yet (CPU only)",
                q.ty
            )))
        }
    })
}

impl DevMat {
    /// Uploads `parts` (each `[rows / parts.len(), cols]`, one dtype) one after another.
    pub fn upload(
        gpu: &Arc<Gpu>,
        parts: &[WeightData],
        rows: usize,
        cols: usize,
    ) -> GpuResult<DevMat> {
        let dtype = parts
            .first()
            .map(|p| p.dtype())
            .ok_or_else(|| GpuError("no matrix to upload".into()))?;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total != rows * cols || parts.iter().any(|p| p.dtype() != dtype) {
            return Err(GpuError(format!(
                "upload of {total} elements as [{rows}, {cols}] (dtypes must agree)"
            )));
        }
        for p in parts {
            bytes_of(p)?;
        }
        let buf = gpu.alloc(total * dtype.size())?;
        let mut at = 0;
        for p in parts {
            let b = bytes_of(p)?;
            buf.write(at, b)?;
            at += b.len();
        }
        Ok(DevMat {
            buf,
            dtype,
            rows,
            cols,
        })
    }

    /// The kernel-name suffix of this dtype.
    pub fn suffix(&self) -> &'static str {
        suffix(self.dtype)
    }

    pub fn ptr(&self) -> u64 {
        self.buf.ptr()
    }

    pub fn bytes(&self) -> usize {
        self.buf.bytes()
    }
}

pub fn suffix(d: WeightDType) -> &'static str {
    match d {
        WeightDType::F32 => "f32",
        WeightDType::BF16 => "bf16",
        WeightDType::F16 => "f16",
        WeightDType::Quant(_) => unreachable!("DevMat::upload refuses quantised weights"),
    }
}
