//! Raw device buffers, allocated and freed in stream order so that a buffer dropped while a
//! queued kernel still reads it stays valid until that kernel has run.

use super::{err, Gpu, GpuError, GpuResult};
use cudarc::driver::{result, sys};
use std::sync::Arc;

pub struct DevBuf {
    gpu: Arc<Gpu>,
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

// SAFETY: a device address; every use goes through the owning `Gpu`'s stream.
unsafe impl Send for DevBuf {}
unsafe impl Sync for DevBuf {}

impl DevBuf {
    pub(super) fn alloc(gpu: &Arc<Gpu>, bytes: usize) -> GpuResult<DevBuf> {
        gpu.bind()?;
        // Zero-byte allocations are refused by the driver; keep one byte so the pointer is real.
        let ptr = unsafe { result::malloc_async(gpu.stream(), bytes.max(1)) }.map_err(|e| {
            let free = gpu.mem_info().map(|m| m.0).unwrap_or(0);
            GpuError(format!(
                "allocating {bytes} bytes on the device ({free} free): {e:?}"
            ))
        })?;
        Ok(DevBuf {
            gpu: gpu.clone(),
            ptr,
            bytes,
        })
    }

    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Device address `offset` bytes in.
    pub fn at(&self, offset: usize) -> u64 {
        debug_assert!(offset <= self.bytes);
        self.ptr + offset as u64
    }

    /// Copies `src` in at byte `offset`.
    pub fn write<T: Copy>(&self, offset: usize, src: &[T]) -> GpuResult<()> {
        let n = std::mem::size_of_val(src);
        if offset + n > self.bytes {
            return Err(GpuError(format!(
                "write of {n} bytes at {offset} into a {}-byte buffer",
                self.bytes
            )));
        }
        if n == 0 {
            return Ok(());
        }
        self.gpu.bind()?;
        // SAFETY: bounds checked; pageable sources are staged before the call returns.
        unsafe { result::memcpy_htod_async(self.ptr + offset as u64, src, self.gpu.stream()) }
            .map_err(err("copy to the device"))
    }

    /// Reads `n` values of `T` from byte `offset`, waiting for the queued work before it.
    pub fn read<T: Copy + Default>(&self, offset: usize, n: usize) -> GpuResult<Vec<T>> {
        let bytes = n * std::mem::size_of::<T>();
        if offset + bytes > self.bytes {
            return Err(GpuError(format!(
                "read of {bytes} bytes at {offset} from a {}-byte buffer",
                self.bytes
            )));
        }
        let mut out = vec![T::default(); n];
        if n == 0 {
            return Ok(out);
        }
        self.gpu.bind()?;
        // SAFETY: bounds checked; synchronizing before returning keeps `out` alive long enough.
        unsafe {
            result::memcpy_dtoh_async(&mut out, self.ptr + offset as u64, self.gpu.stream())
                .map_err(err("copy to the host"))?;
            result::stream::synchronize(self.gpu.stream()).map_err(err("synchronize"))?;
        }
        Ok(out)
    }

    /// Sets every 32-bit word of bytes `[offset, offset + 4·words)` to `value`.
    pub fn fill_u32(&self, offset: usize, words: usize, value: u32) -> GpuResult<()> {
        if offset + 4 * words > self.bytes || offset % 4 != 0 {
            return Err(GpuError(format!(
                "fill of {words} words at {offset} in a {}-byte buffer",
                self.bytes
            )));
        }
        if words == 0 {
            return Ok(());
        }
        self.gpu.bind()?;
        // SAFETY: bounds checked, 4-byte aligned.
        unsafe {
            sys::cuMemsetD32Async(self.ptr + offset as u64, value, words, self.gpu.stream())
                .result()
        }
        .map_err(err("memset"))
    }

    pub fn zero(&self) -> GpuResult<()> {
        self.gpu.bind()?;
        // SAFETY: the whole allocation.
        unsafe { sys::cuMemsetD8Async(self.ptr, 0, self.bytes, self.gpu.stream()).result() }
            .map_err(err("memset"))
    }

    /// Copies `bytes` bytes from `src` at `src_offset` to `self` at `offset`, on the stream.
    pub fn copy_from(
        &self,
        offset: usize,
        src: &DevBuf,
        src_offset: usize,
        bytes: usize,
    ) -> GpuResult<()> {
        if offset + bytes > self.bytes || src_offset + bytes > src.bytes {
            return Err(GpuError(format!(
                "device copy of {bytes} bytes out of bounds ({} → {})",
                src.bytes, self.bytes
            )));
        }
        if bytes == 0 {
            return Ok(());
        }
        self.gpu.bind()?;
        // SAFETY: bounds checked; both on this stream.
        unsafe {
            result::memcpy_dtod_async(
                self.ptr + offset as u64,
                src.ptr + src_offset as u64,
                bytes,
                self.gpu.stream(),
            )
        }
        .map_err(err("device copy"))
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.gpu.bind().is_ok() {
            // SAFETY: allocated on this stream; freed after the work queued before it.
            let _ = unsafe { result::free_async(self.ptr, self.gpu.stream()) };
        }
    }
}

/// Upload helpers.
pub trait HostCopy {
    fn upload<T: Copy>(&self, src: &[T]) -> GpuResult<DevBuf>;
}

impl HostCopy for Arc<Gpu> {
    fn upload<T: Copy>(&self, src: &[T]) -> GpuResult<DevBuf> {
        let b = self.alloc(std::mem::size_of_val(src))?;
        b.write(0, src)?;
        Ok(b)
    }
}
