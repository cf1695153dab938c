//! Random fills and the two ceilings a benchmark divides by: HBM bandwidth (device copy and
//! streaming read) and the bf16 GEMM rate (cuBLAS), measured on the device at hand.

use super::{err, DevBuf, DevSliceMut, Gpu, GpuError, GpuResult, KernelSource};
use crate::{kargs, WeightDType};
use cudarc::cublas::{result as blas, sys as blas_sys};
use std::sync::Arc;

pub const SOURCE: KernelSource = KernelSource {
    name: "util",
    code: include_str!("util.cu"),
};

/// Fills `n` elements of `dtype` at the start of `out` with uniform values in `[-scale, scale)`.
pub fn fill_uniform(
    gpu: &Gpu,
    out: DevSliceMut<u8>,
    n: usize,
    dtype: WeightDType,
    seed: u64,
    scale: f32,
) -> GpuResult<()> {
    out.check("fill_uniform", n * dtype.size())?;
    let ptr = out.ptr();
    let f = gpu.function(&SOURCE, &format!("fill_uniform_{}", super::suffix(dtype)))?;
    let n64 = n as u64;
    let blocks = n.div_ceil(256).min(gpu.sm_count as usize * 32) as u32;
    // SAFETY: argument list matches `fill_uniform_*`.
    unsafe {
        gpu.launch(
            f,
            (blocks, 1, 1),
            (256, 1, 1),
            0,
            &mut kargs!(ptr, n64, seed, scale),
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Device time of `f` in ms: median of `reps` event-timed calls after `warm` untimed ones.
pub fn time_ms(
    gpu: &Gpu,
    warm: usize,
    reps: usize,
    mut f: impl FnMut(usize) -> GpuResult<()>,
) -> GpuResult<f64> {
    for i in 0..warm {
        f(i)?;
    }
    gpu.synchronize()?;
    let mut events = Vec::with_capacity(reps);
    for i in 0..reps {
        let (a, b) = (gpu.event()?, gpu.event()?);
        gpu.record(&a)?;
        f(i)?;
        gpu.record(&b)?;
        events.push((a, b));
    }
    let mut ms = Vec::with_capacity(reps);
    for (a, b) in &events {
        ms.push(a.elapsed_ms(b)? as f64);
    }
    Ok(median(ms))
}

#[derive(Clone, Copy, Debug)]
pub struct Ceilings {
    /// Device-to-device copy, bytes read + written per second (GB/s).
    pub copy_gbps: f64,
    /// Streaming read (GB/s).
    pub read_gbps: f64,
    /// cuBLAS bf16 GEMM 8192³, f32 accumulate (TFLOP/s).
    pub gemm_tflops: f64,
}

/// Copy and read bandwidth over a 2 GiB buffer, and the cuBLAS bf16 GEMM rate at 8192³.
pub fn measure_ceilings(gpu: &Arc<Gpu>) -> GpuResult<Ceilings> {
    let bytes = 2usize << 30;
    let mut src = gpu.alloc(bytes)?;
    let dst = gpu.alloc(bytes)?;
    fill_uniform(gpu, src.slice_mut(), bytes / 2, WeightDType::BF16, 1, 1.0)?;
    let copy = time_ms(gpu, 3, 20, |_| dst.copy_from(0, &src, 0, bytes))?;
    let f = gpu.function(&SOURCE, "read_sum")?;
    let sink = gpu.alloc(4 * 65536)?;
    let (sp, n16, op) = (src.ptr(), (bytes / 16) as u64, sink.ptr());
    let blocks = gpu.sm_count * 8;
    let read = time_ms(gpu, 3, 20, |_| {
        // SAFETY: argument list matches `read_sum`; `sink` holds one word per block.
        unsafe { gpu.launch(f, (blocks, 1, 1), (512, 1, 1), 0, &mut kargs!(sp, n16, op)) }
    })?;
    drop((src, dst));
    let gemm = gemm_rate(gpu, 8192)?;
    Ok(Ceilings {
        copy_gbps: 2.0 * bytes as f64 / (copy * 1e-3) / 1e9,
        read_gbps: bytes as f64 / (read * 1e-3) / 1e9,
        gemm_tflops: gemm,
    })
}

fn blas_err<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> GpuError + '_ {
    err(what)
}

/// TFLOP/s of an `m³` bf16 GEMM through cuBLAS (f32 accumulate) on random data.
pub fn gemm_rate(gpu: &Arc<Gpu>, m: usize) -> GpuResult<f64> {
    // SAFETY: only opens the shared library.
    if !unsafe { blas_sys::is_culib_present() } {
        return Err(GpuError(
            "no cuBLAS library (libcublas.so) on this machine".into(),
        ));
    }
    gpu.bind()?;
    let mut a = gpu.alloc(2 * m * m)?;
    let mut b = gpu.alloc(2 * m * m)?;
    let c = gpu.alloc(2 * m * m)?;
    fill_uniform(gpu, a.slice_mut(), m * m, WeightDType::BF16, 2, 1.0)?;
    fill_uniform(gpu, b.slice_mut(), m * m, WeightDType::BF16, 3, 1.0)?;
    let handle = blas::create_handle().map_err(blas_err("cuBLAS handle"))?;
    let run = |_: usize| -> GpuResult<()> {
        let (alpha, beta) = (1f32, 0f32);
        let mi = m as i32;
        // SAFETY: three m×m bf16 buffers; alpha/beta are host f32 (compute type 32F).
        unsafe {
            blas::set_stream(handle, gpu.stream() as _).map_err(blas_err("cuBLAS stream"))?;
            blas::gemm_ex(
                handle,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                mi,
                mi,
                mi,
                &alpha as *const f32 as *const _,
                a.ptr() as *const _,
                blas_sys::cudaDataType::CUDA_R_16BF,
                mi,
                b.ptr() as *const _,
                blas_sys::cudaDataType::CUDA_R_16BF,
                mi,
                &beta as *const f32 as *const _,
                c.ptr() as *mut _,
                blas_sys::cudaDataType::CUDA_R_16BF,
                mi,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
            .map_err(blas_err("cuBLAS GEMM"))
        }
    };
    let ms = time_ms(gpu, 5, 30, run);
    // SAFETY: created above; the stream is synchronized by `time_ms`'s event wait.
    let _ = unsafe { blas::destroy_handle(handle) };
    let ms = ms?;
    Ok(2.0 * (m as f64).powi(3) / (ms * 1e-3) / 1e12)
}

/// A zeroed device buffer (for tests that poison-fill and check coverage themselves).
pub fn zeros(gpu: &Arc<Gpu>, bytes: usize) -> GpuResult<DevBuf> {
    let b = gpu.alloc(bytes)?;
    b.zero()?;
    Ok(b)
}
