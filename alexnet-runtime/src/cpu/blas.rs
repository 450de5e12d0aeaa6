//! OpenBLAS's `cblas_sgemm`, loaded at run time when the machine has `libopenblas.so.0`
//! (Debian: `apt-get install libopenblas0`). Its AVX-512 kernels make the convolutions about
//! twice as fast as the `gemm` crate's AVX2 ones on stable Rust; without the library, or with
//! `ALEXNET_CPU_GEMM=gemm` in the environment, the `gemm` crate is used. Nothing is
//! needed at build time.

use std::ffi::c_int;
use std::sync::OnceLock;

use super::mat::Mat;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

type Sgemm = unsafe extern "C" fn(
    order: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
);
type SetThreads = unsafe extern "C" fn(n: c_int);

pub struct Blas {
    sgemm: Sgemm,
    // Keeps the library mapped for as long as `sgemm` may be called (forever: a static).
    _lib: libloading::Library,
}

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();

/// OpenBLAS, if it is installed and not disabled.
pub fn get() -> Option<&'static Blas> {
    BLAS.get_or_init(load).as_ref()
}

fn load() -> Option<Blas> {
    if std::env::var("ALEXNET_CPU_GEMM").is_ok_and(|v| v == "gemm") {
        return None;
    }
    // OpenBLAS picks its kernels when it loads. Its CPU detection does not know every
    // (virtual) CPU and then falls back to its slowest kernels ("Prescott"), so unless
    // the user chose, name the kernel family from the features the CPU reports. This runs
    // once, from `Cpu::new`, before the backend starts threads of its own.
    if std::env::var_os("OPENBLAS_CORETYPE").is_none() {
        if let Some(core) = core_type() {
            std::env::set_var("OPENBLAS_CORETYPE", core);
        }
    }
    // SAFETY: loading OpenBLAS runs its initialisers, which only detect the CPU and set up
    // its buffers; it has no preconditions on the calling process.
    let lib = unsafe { libloading::Library::new("libopenblas.so.0") }.ok()?;
    // SAFETY: the symbols are declared with their C signatures from OpenBLAS's cblas.h
    // (`cblas_sgemm`) and openblas_config.h (`openblas_set_num_threads`), LP64 build.
    let (sgemm, set_threads) = unsafe {
        let sgemm = *lib.get::<Sgemm>(b"cblas_sgemm\0").ok()?;
        let set_threads = *lib.get::<SetThreads>(b"openblas_set_num_threads\0").ok()?;
        (sgemm, set_threads)
    };
    // The backend parallelises itself (over images, or over rows of one product); each
    // call into OpenBLAS runs on the calling thread.
    // SAFETY: a plain setter with no preconditions.
    unsafe { set_threads(1) };
    Some(Blas { sgemm, _lib: lib })
}

/// The OpenBLAS kernel family for this CPU's vector extensions.
fn core_type() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
        {
            return Some("SkylakeX");
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Some("Haswell");
        }
    }
    None
}

/// Which matrix multiply the CPU backend uses, for logs.
pub fn describe() -> String {
    match get() {
        Some(_) => match std::env::var("OPENBLAS_CORETYPE") {
            Ok(core) => format!("OpenBLAS sgemm, {core} kernels"),
            Err(_) => "OpenBLAS sgemm".to_string(),
        },
        None => "gemm crate".to_string(),
    }
}

/// A view as CBLAS sees it: (transpose flag, leading dimension), if one of its strides is 1
/// and the other is a valid leading dimension (CBLAS then addresses exactly the view's
/// elements); `None` otherwise, and the `gemm` crate computes the product.
fn cblas_view(m: &Mat) -> Option<(c_int, usize)> {
    if m.col_stride == 1 && (m.row_stride >= m.cols || m.rows <= 1) {
        Some((NO_TRANS, m.row_stride.max(m.cols).max(1)))
    } else if m.row_stride == 1 && (m.col_stride >= m.rows || m.cols <= 1) {
        Some((TRANS, m.col_stride.max(m.rows).max(1)))
    } else {
        None
    }
}

impl Blas {
    /// Whether CBLAS can compute `a * b` into a row-major C with leading dimension `ldc`:
    /// each view has a unit stride, and every size fits a C `int`.
    pub fn supports(&self, a: &Mat, b: &Mat, ldc: usize) -> bool {
        match (cblas_view(a), cblas_view(b)) {
            (Some((_, lda)), Some((_, ldb))) => {
                let dims = [a.rows, b.cols, a.cols, lda, ldb, ldc.max(b.cols)];
                dims.iter().all(|&v| c_int::try_from(v).is_ok())
                    && a.rows > 0
                    && b.cols > 0
                    && a.cols > 0
            }
            _ => false,
        }
    }

    /// `c = a * b` (or `c += a * b`) with `c` row-major (leading dimension `ldc`), on this
    /// thread. Does nothing unless [`Blas::supports`] the product.
    ///
    /// The caller (`gemm::sgemm_strided`) has checked that every view lies inside its slice
    /// and that `c` aliases neither input.
    pub fn sgemm_row_major(&self, a: Mat, b: Mat, c: &mut [f32], ldc: usize, accumulate: bool) {
        if !self.supports(&a, &b, ldc) {
            debug_assert!(false, "sgemm_row_major called for an unsupported product");
            return;
        }
        let (Some((ta, lda)), Some((tb, ldb))) = (cblas_view(&a), cblas_view(&b)) else {
            return;
        };
        let (m, n, k) = (a.rows, b.cols, a.cols);
        let ldc = ldc.max(n);
        let beta = if accumulate { 1.0 } else { 0.0 };
        // SAFETY: the caller proved that the views' extents fit their slices; with the
        // leading dimensions above, CBLAS addresses exactly those elements (for NoTrans
        // row-major A: a[i * lda + p]; for Trans: a[p * lda + i]). `c` is a unique borrow,
        // so it aliases neither input. All sizes fit `c_int` (checked).
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                ta,
                tb,
                m as c_int,
                n as c_int,
                k as c_int,
                1.0,
                a.data.as_ptr(),
                lda as c_int,
                b.data.as_ptr(),
                ldb as c_int,
                beta,
                c.as_mut_ptr(),
                ldc as c_int,
            )
        };
    }
}
