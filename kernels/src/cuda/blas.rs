//! cuBLAS on the `Gpu`'s stream: one handle per device, created at first use.

use super::{err, Gpu, GpuError, GpuResult};
use crate::WeightDType;
use cudarc::cublas::{result as blas, sys as bsys};

/// The handle, bound to the device's stream.
pub(super) struct BlasHandle(pub(super) bsys::cublasHandle_t);

// SAFETY: used only under the `Gpu`'s mutex.
unsafe impl Send for BlasHandle {}

impl Drop for BlasHandle {
    fn drop(&mut self) {
        // SAFETY: created by `create_handle`.
        let _ = unsafe { blas::destroy_handle(self.0) };
    }
}

fn data_type(d: WeightDType) -> bsys::cudaDataType {
    match d {
        WeightDType::F32 => bsys::cudaDataType::CUDA_R_32F,
        WeightDType::BF16 => bsys::cudaDataType::CUDA_R_16BF,
        WeightDType::F16 => bsys::cudaDataType::CUDA_R_16F,
        WeightDType::Quant(_) => unreachable!("DevMat::upload refuses quantised weights"),
    }
}

impl Gpu {
    /// Row-major `c[m, n] = a[m, k] · w[n, k]ᵀ` (activations times weights transposed), f32
    /// accumulate; `a` and `w` in `ab`, `c` in `c_type`.
    ///
    /// # Safety
    /// `a`, `w` and `c` must be device addresses of this `Gpu`'s context holding at least
    /// `m·k`, `n·k` (in `ab`) and `m·n` (in `c_type`) values, allocated until the GEMM has run
    /// (stream-ordered frees after this call are fine). Raw addresses remain here because the
    /// callers pass offsets into stacked expert matrices and scratch.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_rows_by_weights(
        &self,
        a: u64,
        w: u64,
        ab: WeightDType,
        c: u64,
        c_type: WeightDType,
        m: usize,
        n: usize,
        k: usize,
    ) -> GpuResult<()> {
        if m == 0 {
            return Ok(());
        }
        // SAFETY: only opens the shared library.
        if !unsafe { bsys::is_culib_present() } {
            return Err(GpuError(
                "no cuBLAS library (libcublas.so) on this machine".into(),
            ));
        }
        self.bind()?;
        let mut guard = self.blas.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let h = blas::create_handle().map_err(err("creating the cuBLAS handle"))?;
            // SAFETY: a fresh handle and this device's stream.
            unsafe { blas::set_stream(h, self.stream() as _) }.map_err(err("cuBLAS stream"))?;
            *guard = Some(BlasHandle(h));
        }
        let h = guard.as_ref().expect("created above").0;
        let (alpha, beta) = (1f32, 0f32);
        // Column-major view: cᵀ[n, m] = w[n, k] · aᵀ[k, m], i.e. op(A) = wᵀ-as-stored (T),
        // op(B) = aᵀ-as-stored (N).
        // SAFETY: the caller sizes the buffers; alpha/beta are host f32 for compute type 32F.
        unsafe {
            blas::gemm_ex(
                h,
                bsys::cublasOperation_t::CUBLAS_OP_T,
                bsys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                &alpha as *const f32 as *const _,
                w as *const _,
                data_type(ab),
                k as i32,
                a as *const _,
                data_type(ab),
                k as i32,
                &beta as *const f32 as *const _,
                c as *mut _,
                data_type(c_type),
                n as i32,
                bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(err("cuBLAS GEMM"))
    }
}
