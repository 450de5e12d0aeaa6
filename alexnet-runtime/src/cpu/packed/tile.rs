//! The micro-kernels: one `MR x NR` tile of C from some steps of K, the portable one and
//! the AVX-512 ones (f32; bf16 widened to f32 for FMAs, or on AVX512_BF16's `vdpbf16ps`),
//! bias and ReLU as C is stored.

use super::{holds, Arith, Kernel, MR, NR};

/// One micro-kernel call: `rows x cols` of C (at most [`MR`] x [`NR`]) from `steps` steps
/// of K.
pub(super) struct Tile<'a> {
    /// A from the tile's first row and step.
    pub(super) a: &'a [f32],
    /// Values of `a` from one row to the next.
    pub(super) a_row: usize,
    /// Values of `a` from one step to the next (in bf16, the odd row of K sits [`MR`]
    /// after the even one: A is packed, `a_row` 1).
    pub(super) a_step: usize,
    /// In bf16 on [`Kernel::Avx512Bf16`]: A as pairs of K in words, `[step][MR]` (then
    /// `a` is not read).
    pub(super) pairs: Option<&'a [u32]>,
    pub(super) b: &'a [u32],
    pub(super) steps: usize,
    pub(super) c: &'a mut [f32],
    pub(super) ldc: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
    /// C starts from zero (otherwise from what it holds).
    pub(super) first: bool,
    pub(super) bias: Option<&'a [f32]>,
    pub(super) relu: bool,
    /// B streams from memory (the first row block over a packed panel read whole): the
    /// bf16 kernels prefetch it ahead.
    pub(super) stream: bool,
}

macro_rules! by_rows {
    ($rows:expr, $f:ident, $($arg:expr),*) => {
        match $rows {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            _ => $f::<MR>($($arg),*),
        }
    };
}

impl Tile<'_> {
    pub(super) fn run(self, arith: Arith, kernel: Kernel) {
        assert!(self.rows >= 1 && self.rows <= MR && self.cols <= NR && self.steps >= 1);
        let dot = arith == Arith::Bf16 && kernel.dots();
        if dot {
            let pairs = self
                .pairs
                .expect("tile: bf16 dot products without pairs of A");
            assert!(
                self.steps.checked_mul(MR).is_some_and(|n| n <= pairs.len()),
                "tile: A's pairs too short"
            );
        }
        let odd = match arith {
            Arith::F32 => 0,
            Arith::Bf16 => {
                assert!(dot || self.a_row == 1, "tile: bf16 A not packed");
                MR
            }
        };
        // Checked arithmetic: a wrapped product would let the kernels' pointers past
        // these bounds.
        let a_last = (self.rows - 1)
            .checked_mul(self.a_row)
            .zip((self.steps - 1).checked_mul(self.a_step))
            .and_then(|(r, s)| r.checked_add(s)?.checked_add(odd));
        assert!(
            dot || a_last.is_some_and(|i| i < self.a.len()),
            "tile: A too short"
        );
        assert!(
            self.steps
                .checked_mul(NR)
                .is_some_and(|n| n <= self.b.len()),
            "tile: B too short"
        );
        assert!(
            holds(self.c.len(), self.rows, self.ldc, self.cols),
            "tile: C too short"
        );
        assert!(self.bias.is_none_or(|b| b.len() >= self.rows));
        #[cfg(target_arch = "x86_64")]
        if dot {
            return by_rows!(self.rows, tile_dot, self);
        }
        #[cfg(target_arch = "x86_64")]
        if kernel.avx512() {
            return by_rows!(self.rows, tile_avx512, self, arith);
        }
        by_rows!(self.rows, tile_portable, self, arith)
    }

    /// Bias, ReLU and the store of the portable kernels.
    fn store<const R: usize>(self, acc: &[[f32; NR]; R]) {
        for (r, row) in acc.iter().enumerate() {
            for (dst, &v) in self.c[r * self.ldc..][..self.cols].iter_mut().zip(row) {
                let v = self.bias.map_or(v, |b| v + b[r]);
                *dst = if self.relu { v.max(0.0) } else { v };
            }
        }
    }
}

/// The portable micro-kernel: the AVX-512 one's sums in its order, each rounded once.
fn tile_portable<const R: usize>(t: Tile<'_>, arith: Arith) {
    let mut acc = [[0.0f32; NR]; R];
    if !t.first {
        for (r, row) in acc.iter_mut().enumerate() {
            row[..t.cols].copy_from_slice(&t.c[r * t.ldc..][..t.cols]);
        }
    }
    for s in 0..t.steps {
        let bw = &t.b[s * NR..(s + 1) * NR];
        for (r, row) in acc.iter_mut().enumerate() {
            match arith {
                Arith::F32 => {
                    let av = t.a[s * t.a_step + r * t.a_row];
                    for (v, &w) in row.iter_mut().zip(bw) {
                        *v = av.mul_add(f32::from_bits(w), *v);
                    }
                }
                Arith::Bf16 => {
                    let even = t.a[s * t.a_step + r];
                    let odd = t.a[s * t.a_step + MR + r];
                    for (v, &w) in row.iter_mut().zip(bw) {
                        let (lo, hi) = (f32::from_bits(w << 16), f32::from_bits(w & 0xffff_0000));
                        // Products of bf16 values are exact in f32, so a plain multiply and
                        // add rounds once, as an FMA does (and `mul_add` without hardware
                        // FMA is a slow library call).
                        *v = (*v + odd * hi) + even * lo;
                    }
                }
            }
        }
    }
    t.store(&acc);
}

#[cfg(target_arch = "x86_64")]
fn tile_avx512<const R: usize>(mut t: Tile<'_>, arith: Arith) {
    // SAFETY: `Tile::run` checked that this CPU has AVX-512F (the target feature the
    // functions enable) and asserted the lengths they rely on.
    unsafe {
        match arith {
            Arith::F32 => avx512_f32::<R>(&mut t),
            Arith::Bf16 => avx512_bf16::<R>(&mut t),
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn tile_dot<const R: usize>(mut t: Tile<'_>) {
    // SAFETY: `Tile::run` checked that this CPU has AVX-512F and AVX512_BF16 (the target
    // features the function enables) and asserted the lengths it relies on.
    unsafe { avx512_dot::<R>(&mut t) }
}

/// The lanes of each of C's three vectors that lie inside the tile's `cols`.
#[cfg(target_arch = "x86_64")]
pub(super) fn masks(cols: usize) -> [u16; 3] {
    [0, 1, 2].map(|v| {
        let lo = v * 16;
        if cols >= lo + 16 {
            0xffff
        } else if cols > lo {
            (1u16 << (cols - lo)) - 1
        } else {
            0
        }
    })
}

/// Loads the tile's C (or zeros on the first block of K).
///
/// # Safety
/// AVX-512F; `t.c` holds `(R - 1) * ldc + cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn load_c<const R: usize>(t: &Tile<'_>) -> [[std::arch::x86_64::__m512; 3]; R] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 3]; R];
    if !t.first {
        let (m, c) = (masks(t.cols), t.c.as_ptr());
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                // SAFETY: lanes outside the mask are not read; the masked ones lie inside
                // `t.c` (row `r < R`, columns below `cols`). The address is made with
                // `wrapping_add`: a vector with no lane inside may point past the end.
                *x = _mm512_maskz_loadu_ps(m[v], c.wrapping_add(r * t.ldc + v * 16));
            }
        }
    }
    acc
}

/// Adds the bias, applies ReLU and stores the tile (`acc` by value: a reference would
/// keep the accumulators in memory through the kernel's loop).
///
/// # Safety
/// As [`load_c`], and `t.bias` (if any) holds `R` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_c<const R: usize>(t: &mut Tile<'_>, acc: [[std::arch::x86_64::__m512; 3]; R]) {
    use std::arch::x86_64::*;
    let (m, c) = (masks(t.cols), t.c.as_mut_ptr());
    let zero = _mm512_setzero_ps();
    for (r, row) in acc.iter().enumerate() {
        let bias = t.bias.map(|v| _mm512_set1_ps(v[r]));
        for (v, &x) in row.iter().enumerate() {
            let x = bias.map_or(x, |b| _mm512_add_ps(x, b));
            let x = if t.relu { _mm512_max_ps(x, zero) } else { x };
            // SAFETY: as in `load_c`, for writes.
            _mm512_mask_storeu_ps(c.wrapping_add(r * t.ldc + v * 16), m[v], x);
        }
    }
}

/// f32: per step of K, three loads of B, R broadcasts of A and 3R FMAs.
///
/// # Safety
/// AVX-512F; `t.a` holds `steps * MR` values, `t.b` `steps * NR` words, `t.c` and
/// `t.bias` as [`store_c`] needs; `R <= MR`, `cols <= NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_f32<const R: usize>(t: &mut Tile<'_>) {
    use std::arch::x86_64::*;
    let mut acc = load_c::<R>(t);
    let (a, b) = (t.a.as_ptr(), t.b.as_ptr() as *const f32);
    for s in 0..t.steps {
        // SAFETY: `s * NR + 47 < steps * NR` and `s * a_step + r * a_row < a.len()`
        // (`Tile::run`).
        let bp = b.add(s * NR);
        let bv = [
            _mm512_loadu_ps(bp),
            _mm512_loadu_ps(bp.add(16)),
            _mm512_loadu_ps(bp.add(32)),
        ];
        let ap = a.add(s * t.a_step);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ap.add(r * t.a_row));
            for (x, &w) in row.iter_mut().zip(&bv) {
                *x = _mm512_fmadd_ps(av, w, *x);
            }
        }
    }
    store_c::<R>(t, acc);
}

/// Steps of B (192 bytes each) prefetched ahead.
const PREFETCH: usize = 48;

/// Asks for the step of B [`PREFETCH`] steps after `step` (its three 64-byte lines). For
/// the first row block of A against a long packed panel of B (a fully connected layer at
/// a small batch): B streams from memory, and asking for it ahead keeps more of its lines
/// in flight than the hardware's prefetchers do.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_step(step: *const std::arch::x86_64::__m512i) {
    use std::arch::x86_64::*;
    let ahead = step.wrapping_add(3 * PREFETCH) as *const i8;
    for line in 0..3 {
        // SAFETY: a prefetch is a hint: it reads nothing architecturally and never
        // faults, so an address past the end of B (the last PREFETCH steps ask for lines
        // beyond it) is harmless; `wrapping_add` makes that address without `add`'s
        // requirement to stay inside the allocation.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line)) };
    }
}

/// bf16: per step (two rows of K), three loads of B widened to six f32 vectors (the odd
/// rows masked out of the high halves, the even ones shifted up), 2R broadcasts of A and
/// 6R FMAs, the odd row first.
///
/// # Safety
/// As [`avx512_f32`], with `t.a` holding `2 * steps * MR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_bf16<const R: usize>(t: &mut Tile<'_>) {
    use std::arch::x86_64::*;
    let mut acc = load_c::<R>(t);
    let (a, b) = (t.a.as_ptr(), t.b.as_ptr() as *const __m512i);
    let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
    for s in 0..t.steps {
        // SAFETY: `s * NR + 47 < steps * NR` and `s * a_step + MR + r < a.len()`
        // (`Tile::run`).
        let bp = b.add(s * 3);
        if t.stream {
            prefetch_step(bp);
        }
        let w = [
            _mm512_loadu_si512(bp),
            _mm512_loadu_si512(bp.add(1)),
            _mm512_loadu_si512(bp.add(2)),
        ];
        let hi = w.map(|x| _mm512_castsi512_ps(_mm512_and_si512(x, high)));
        let lo = w.map(|x| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(x)));
        let even = a.add(s * t.a_step);
        let odd = even.add(MR);
        for (r, row) in acc.iter_mut().enumerate() {
            let ao = _mm512_set1_ps(*odd.add(r));
            let ae = _mm512_set1_ps(*even.add(r));
            for ((x, &h), &l) in row.iter_mut().zip(&hi).zip(&lo) {
                *x = _mm512_fmadd_ps(ae, l, _mm512_fmadd_ps(ao, h, *x));
            }
        }
    }
    store_c::<R>(t, acc);
}

/// bf16 on `vdpbf16ps`: per step (two rows of K), three loads of B's words, R broadcasts
/// of A's pairs and 3R dot products, each adding a pair of products to every f32 lane.
///
/// # Safety
/// AVX-512F and AVX512_BF16; `t.pairs` holds `steps * MR` words, `t.b` `steps * NR`,
/// `t.c` and `t.bias` as [`store_c`] needs; `R <= MR`, `cols <= NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn avx512_dot<const R: usize>(t: &mut Tile<'_>) {
    use std::arch::x86_64::*;
    let mut acc = load_c::<R>(t);
    let pairs = t.pairs.unwrap_or_default();
    let (a, b) = (pairs.as_ptr(), t.b.as_ptr() as *const __m512i);
    for s in 0..t.steps {
        // SAFETY: `s * NR + 47 < steps * NR` and `s * MR + r < pairs.len()` (`Tile::run`).
        let bp = b.add(s * 3);
        if t.stream {
            prefetch_step(bp);
        }
        let w: [__m512bh; 3] = [0, 1, 2].map(|v| {
            // SAFETY: as above; the bits of 32 bf16 values.
            unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(v))) }
        });
        let ap = a.add(s * MR);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*ap.add(r) as i32));
            for (x, &wv) in row.iter_mut().zip(&w) {
                *x = _mm512_dpbf16_ps(*x, av, wv);
            }
        }
    }
    store_c::<R>(t, acc);
}
