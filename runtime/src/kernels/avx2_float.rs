//! AVX2 float kernels (stub).
pub(super) unsafe fn rows(w: &super::Weight, x: &[f32], n: usize, r0: usize, r1: usize, y: *mut f32, ys: usize) {
    super::reference::rows(w, x, n, r0, r1, y, ys)
}
