//! Typed views of device memory for the launchers: a device address and a length in elements,
//! borrowed from a [`DevBuf`] so that the buffer outlives every launch that takes the view (its
//! memory is then freed in stream order, after those launches). Launchers check the lengths
//! against what the kernel will touch and return an error instead of launching.

use super::{DevBuf, GpuError, GpuResult};
use std::marker::PhantomData;

/// `len` values of `T` on the device, read by a kernel.
#[derive(Debug)]
pub struct DevSlice<'a, T> {
    ptr: u64,
    len: usize,
    _buf: PhantomData<&'a [T]>,
}

impl<T> Clone for DevSlice<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DevSlice<'_, T> {}

/// `len` values of `T` on the device, written by a kernel.
#[derive(Debug)]
pub struct DevSliceMut<'a, T> {
    ptr: u64,
    len: usize,
    _buf: PhantomData<&'a mut [T]>,
}

fn range_err(what: &str, start: usize, len: usize, have: usize) -> GpuError {
    GpuError(format!(
        "{what}: elements [{start}, {}) of a {have}-element device slice",
        start + len
    ))
}

impl<'a, T> DevSlice<'a, T> {
    /// A view of `len` values at device address `ptr`.
    ///
    /// # Safety
    /// `ptr` must address `len` values of `T` in device memory of this process's current
    /// context that stays allocated for `'a`.
    pub unsafe fn from_raw(ptr: u64, len: usize) -> Self {
        DevSlice {
            ptr,
            len,
            _buf: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address, for a kernel argument.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Values `[start, start + len)`.
    pub fn sub(&self, start: usize, len: usize) -> GpuResult<DevSlice<'a, T>> {
        if start.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(range_err("sub-slice", start, len, self.len));
        }
        Ok(DevSlice {
            ptr: self.ptr + (start * std::mem::size_of::<T>()) as u64,
            len,
            _buf: PhantomData,
        })
    }

    /// An error naming `what` unless the slice holds at least `need` values.
    pub fn check(&self, what: &str, need: usize) -> GpuResult<()> {
        check(what, self.len, need)
    }
}

impl<'a, T> DevSliceMut<'a, T> {
    /// A view of `len` values at device address `ptr` that kernels may write.
    ///
    /// # Safety
    /// As [`DevSlice::from_raw`], and nothing else may use the memory while the view is alive.
    pub unsafe fn from_raw(ptr: u64, len: usize) -> Self {
        DevSliceMut {
            ptr,
            len,
            _buf: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address, for a kernel argument.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// A shorter-lived read view of the same values.
    pub fn as_slice(&self) -> DevSlice<'_, T> {
        DevSlice {
            ptr: self.ptr,
            len: self.len,
            _buf: PhantomData,
        }
    }

    /// A shorter-lived write view of the same values (to pass on without giving this one up).
    pub fn reborrow(&mut self) -> DevSliceMut<'_, T> {
        DevSliceMut {
            ptr: self.ptr,
            len: self.len,
            _buf: PhantomData,
        }
    }

    /// Values `[start, start + len)`, taking this view.
    pub fn sub(self, start: usize, len: usize) -> GpuResult<DevSliceMut<'a, T>> {
        if start.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(range_err("sub-slice", start, len, self.len));
        }
        Ok(DevSliceMut {
            ptr: self.ptr + (start * std::mem::size_of::<T>()) as u64,
            len,
            _buf: PhantomData,
        })
    }

    /// An error naming `what` unless the slice holds at least `need` values.
    pub fn check(&self, what: &str, need: usize) -> GpuResult<()> {
        check(what, self.len, need)
    }
}

fn check(what: &str, have: usize, need: usize) -> GpuResult<()> {
    if have < need {
        return Err(GpuError(format!(
            "{what}: a device slice of {have} elements where the kernel touches {need}"
        )));
    }
    Ok(())
}

impl DevBuf {
    /// The whole buffer as values of `T` (a partial last value is left out).
    pub fn slice<T>(&self) -> DevSlice<'_, T> {
        DevSlice {
            ptr: self.ptr(),
            len: self.bytes() / std::mem::size_of::<T>().max(1),
            _buf: PhantomData,
        }
    }

    /// The whole buffer as values of `T` that a kernel writes.
    pub fn slice_mut<T>(&mut self) -> DevSliceMut<'_, T> {
        DevSliceMut {
            ptr: self.ptr(),
            len: self.bytes() / std::mem::size_of::<T>().max(1),
            _buf: PhantomData,
        }
    }
}
