//! Zero-initialised buffers whose first element is 64-byte aligned.
//!
//! A 512-bit load that straddles two cache lines takes two load slots. `Vec<i16>` is only as
//! aligned as the allocator makes it (16 bytes), so 512-bit activation loads could straddle
//! lines; on the Zen 5 of docs/BENCHMARKS.md a loop of straddling 512-bit loads ran at one per
//! cycle instead of two (the NF kernels of 2026-12-02 were not load-bound and did not change).
//! Each input's activations start at a multiple of 128 elements, so aligning the buffer aligns
//! every input.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Element types for which all-zero bytes are a valid value.
///
/// # Safety
/// Implement only for plain numbers.
pub(crate) unsafe trait Zeroable: Copy {}
unsafe impl Zeroable for i8 {}
unsafe impl Zeroable for i16 {}

/// A growable `[T]` on whole cache lines.
pub(crate) struct AlignedBuf<T: Zeroable> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Zeroable> AlignedBuf<T> {
    pub fn new() -> Self {
        Self { lines: Vec::new(), len: 0, _t: PhantomData }
    }

    /// Set the length to `len`; elements past the old length are zero.
    pub fn resize(&mut self, len: usize) {
        let lines = (len * size_of::<T>()).div_ceil(64);
        if lines > self.lines.len() {
            self.lines.resize(lines, Line([0; 64]));
        }
        if len > self.len {
            // SAFETY: zero bytes are a valid T, and the lines hold `len` elements.
            unsafe { std::ptr::write_bytes((self.lines.as_mut_ptr() as *mut T).add(self.len), 0, len - self.len) };
        }
        self.len = len;
    }

    /// Elements the buffer holds without allocating (the tests check that scratch stops growing).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.lines.capacity() * 64 / size_of::<T>()
    }
}

impl<T: Zeroable> Deref for AlignedBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the lines are initialised, aligned for any T, and hold at least `len` elements.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }
}

impl<T: Zeroable> DerefMut for AlignedBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::AlignedBuf;

    #[test]
    fn aligned_zeroed_and_growing() {
        let mut b = AlignedBuf::<i16>::new();
        assert!(b.is_empty());
        b.resize(100);
        assert_eq!(b.len(), 100);
        assert_eq!(b.as_ptr() as usize % 64, 0);
        assert!(b.iter().all(|&v| v == 0));
        b[99] = 7;
        b.resize(50);
        assert_eq!(b.len(), 50);
        b.resize(1000);
        assert_eq!(b.as_ptr() as usize % 64, 0);
        assert_eq!(b[99], 0, "elements past the old length are zero");
        assert!(b.capacity() >= 1000);
    }
}
