//! The float32 matrix product on slices, for charrnn's own loops: MKL's `sgemm_` (its Fortran interface,
//! which libtorch's CPU library carries and exports), looked up at run time (`dlsym`) and called directly,
//! so that a time step's small product costs no libtorch call (views, dispatch, checks: several
//! microseconds each). Where the symbol is missing, the same product goes through libtorch.
use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// Fortran BLAS `sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`, 32-bit integers
/// (the LP64 interface libtorch links).
type Sgemm = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    *const c_int,
    *const c_int,
    *const c_int,
    *const f32,
    *const f32,
    *const c_int,
    *const f32,
    *const c_int,
    *const f32,
    *mut f32,
    *const c_int,
);

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// `sgemm_`, where a loaded library exports it.
fn sgemm() -> Option<Sgemm> {
    static SGEMM: OnceLock<Option<Sgemm>> = OnceLock::new();
    *SGEMM.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT (null) searches the loaded libraries; the symbol, when found, is
        // BLAS's sgemm with the signature above.
        unsafe {
            let f = dlsym(std::ptr::null_mut(), c"sgemm_".as_ptr());
            (!f.is_null()).then(|| std::mem::transmute::<*mut c_void, Sgemm>(f))
        }
    })
}

/// `c <- a b + beta c` for row-major `a` `[m, k]`, `b` `[k, n]` and `c` `[m, n]`, on the calling thread's
/// terms (inside a parallel region MKL runs it on that thread alone).
pub(crate) fn gemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], beta: f32, c: &mut [f32]) {
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n, "gemm: slice sizes");
    if m == 0 || n == 0 {
        return;
    }
    let Some(sgemm) = sgemm() else {
        // SAFETY: the tensors view the slices, alive and of these sizes, for the product alone.
        let view = |s: *const f32, rows: usize, cols: usize| unsafe {
            Tensor::from_blob(s as *const u8, &[rows as i64, cols as i64], &[cols as i64, 1], Kind::Float, Device::Cpu)
        };
        let (a, b, mut c) = (view(a.as_ptr(), m, k), view(b.as_ptr(), k, n), view(c.as_ptr(), m, n));
        if beta == 0.0 {
            let _ = a.mm_out(&c, &b);
        } else {
            let _ = c.g_mul_scalar_(f64::from(beta)).addmm_(&a, &b);
        }
        return;
    };
    // Row-major c = a b is column-major c^T = b^T a^T: Fortran's product of b and a, n by m.
    let (mm, nn, kk) = (n as c_int, m as c_int, k as c_int);
    let (no, one) = (b'N' as c_char, 1.0f32);
    // SAFETY: the slices hold the sizes asserted above, with leading dimensions n (b, c) and k (a).
    unsafe {
        sgemm(&no, &no, &mm, &nn, &kk, &one, b.as_ptr(), &mm, a.as_ptr(), &kk, &beta, c.as_mut_ptr(), &mm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_product_equals_libtorchs_and_adds_into_c_with_beta() {
        let _ = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        assert!(sgemm().is_some(), "libtorch exports sgemm_");
        let (m, n, k) = (5, 7, 3);
        let a = Tensor::randn([m, k], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([k, n], (Kind::Float, Device::Cpu));
        let c0 = Tensor::randn([m, n], (Kind::Float, Device::Cpu));
        let floats = |t: &Tensor| Vec::<f32>::try_from(t.reshape([-1])).unwrap();
        for beta in [0.0f32, 1.0, 0.5] {
            let mut c = floats(&c0);
            gemm(m as usize, n as usize, k as usize, &floats(&a), &floats(&b), beta, &mut c);
            let expected = a.mm(&b) + &c0 * f64::from(beta);
            let ours = Tensor::from_slice(&c).view([m, n]);
            // Sums of 3 products and one more term: a few float32 roundings of values of order 1.
            assert!(ours.allclose(&expected, 1e-5, 1e-5, false), "beta {beta}");
        }
    }
}
