//! Large host buffers on transparent huge pages where Linux allows it. A fully connected
//! layer's weights stream through the caches once per forward pass at batch 1 (fc6 alone
//! is 151 MB); on 4 KiB pages every page needs its own TLB entry and the hardware
//! prefetchers stop at each page boundary. With Linux's transparent huge pages in their
//! common `madvise` mode, a buffer gets 2 MiB pages only when asked (`MADV_HUGEPAGE`)
//! before its pages are first touched, so the CPU backend asks for every buffer of at
//! least [`MIN_BYTES`] (weights, activations, gradients, momentum, bf16 packs). Measured
//! on this project's machine: fc6-fc8 at batch 1 about 6% faster (docs/benchmarks.md).
//! `ALEXNET_CPU_HUGE_PAGES=off` leaves the kernel's default; elsewhere than Linux it is a
//! plain allocation.

use std::sync::OnceLock;

/// Buffers below this size keep the default pages.
pub const MIN_BYTES: usize = 4 << 20;

/// A buffer of `len` default values (zeros for the number types), advised onto huge pages
/// when it is large enough, before anything is written to it.
pub fn zeroed<T: Clone + Default>(len: usize) -> Vec<T> {
    let v = vec![T::default(); len];
    advise(&v);
    v
}

/// `data` copied into a buffer from [`zeroed`].
pub fn copied<T: Clone + Default + Copy>(data: &[T]) -> Vec<T> {
    let mut v = zeroed(data.len());
    v.copy_from_slice(data);
    v
}

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !std::env::var("ALEXNET_CPU_HUGE_PAGES").is_ok_and(|v| v == "off"))
}

/// Asks the kernel for huge pages under the whole 4 KiB pages of `v` (advice only: a
/// refusal, or a kernel without transparent huge pages, changes nothing).
fn advise<T>(v: &[T]) {
    let bytes = std::mem::size_of_val(v);
    if bytes < MIN_BYTES || !enabled() {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let p = v.as_ptr() as usize;
        let (start, end) = (p.next_multiple_of(4096), (p + bytes) & !4095);
        if end > start {
            // SAFETY: FFI. `[start, end)` lies inside `v`'s live allocation and is
            // page-aligned; MADV_HUGEPAGE changes how the kernel backs those pages, never
            // their contents, and its result (an error where THP is off) is advisory.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_hold_zeros_or_the_data_at_any_size() {
        for len in [0, 1, 1000, MIN_BYTES / 4 + 17, 3 * MIN_BYTES / 4] {
            let z: Vec<f32> = zeroed(len);
            assert_eq!(z.len(), len);
            assert!(z.iter().all(|&v| v == 0.0));
            let data: Vec<u32> = (0..len as u32).collect();
            assert_eq!(copied(&data), data);
        }
    }
}
