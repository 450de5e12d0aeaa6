//! Hot loops compiled twice: for the baseline x86-64 this crate is built for (SSE2, so that
//! one binary runs anywhere) and for AVX-512, chosen at run time ([`avx512`]). The loops
//! are plain Rust: [`wide!`] wraps a function whose body, and every helper it calls marked
//! `#[inline(always)]`, is compiled a second time with AVX-512 enabled, so that it
//! vectorises 16 lanes wide (generic functions too: Winograd's transforms, one copy per
//! algorithm).

use std::sync::OnceLock;

/// Whether this CPU has AVX-512 F, BW, DQ and VL (with AVX2 and FMA), unless
/// `ALEXNET_CPU_SIMD=baseline`.
pub fn avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        if std::env::var("ALEXNET_CPU_SIMD").is_ok_and(|v| v == "baseline") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// `fn name(args) -> R { body }`, compiled for the baseline and for AVX-512 and dispatched
/// on [`avx512`]. The body's helpers must be `#[inline(always)]` to be compiled wide too.
/// A generic function is written `fn name<T: Bound; const N: usize, ...>(args)`: the type
/// parameters (each with one bound) before the semicolon, the const ones after it.
macro_rules! wide {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$($tp:ident: $tb:path),* ; $(const $cp:ident: $ct:ty),*>
        ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name<$($tp: $tb,)* $(const $cp: $ct),*>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body<$($tp: $tb,)* $(const $cp: $ct),*>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl")]
            fn avx512<$($tp: $tb,)* $(const $cp: $ct),*>($($arg: $ty),*) $(-> $ret)? {
                body::<$($tp,)* $($cp),*>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::cpu::simd::avx512() {
                // SAFETY: `simd::avx512()` checked that this CPU has every feature the
                // function enables; its body is safe Rust.
                return unsafe { avx512::<$($tp,)* $($cp),*>($($arg),*) };
            }
            body::<$($tp,)* $($cp),*>($($arg),*)
        }
    };
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $crate::cpu::simd::wide! {
            $(#[$m])* $vis fn $name<;>($($arg: $ty),*) $(-> $ret)? $body
        }
    };
}

pub(crate) use wide;
