//! Per-thread buffers that the CPU kernels (and the CPU backend) keep across calls, so that a
//! warm decode step does not allocate them again.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Buffers that grew above this many elements (a long prompt's: megabytes, paid for once over
/// all its tokens) are released after the call; a decode step's (a few rows) are kept.
pub const RETAINED_ELEMENTS: usize = 1 << 18;

/// Runs `f` on this thread's buffers in `key`, or on fresh ones while those are in use: a call
/// re-entered on this thread (outside a team, rayon may run another pass's work here while a
/// call waits) takes its own.
pub fn with_scratch<S: Default, R>(
    key: &'static LocalKey<RefCell<S>>,
    f: impl FnOnce(&mut S) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => f(&mut kept),
        Err(_) => f(&mut S::default()),
    })
}

/// Resizes `v` to `len` elements, all `fill`, reusing its allocation.
pub fn refill<T: Copy>(v: &mut Vec<T>, len: usize, fill: T) {
    v.clear();
    v.resize(len, fill);
}

/// Releases `v`'s memory if it grew above [`RETAINED_ELEMENTS`].
pub fn release_if_large<T>(v: &mut Vec<T>) {
    if v.capacity() > RETAINED_ELEMENTS {
        *v = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static KEPT: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    }

    #[test]
    fn buffers_are_kept_across_calls_and_a_reentered_call_gets_fresh_ones() {
        with_scratch(&KEPT, |v| v.extend([1, 2, 3]));
        with_scratch(&KEPT, |v| {
            assert_eq!(v, &[1, 2, 3]);
            with_scratch(&KEPT, |inner| {
                assert!(inner.is_empty());
                inner.push(9);
            });
            assert_eq!(v, &[1, 2, 3]);
        });
        let mut large = Vec::<f32>::with_capacity(RETAINED_ELEMENTS + 1);
        release_if_large(&mut large);
        assert_eq!(large.capacity(), 0);
        let mut small = Vec::<f32>::with_capacity(16);
        release_if_large(&mut small);
        assert!(small.capacity() >= 16);
    }
}
