//! Weights kept in the layout a kernel prefers (Winograd-transformed filters, bf16 panels),
//! made once and reused while the weights stay the same.
//!
//! An entry knows the weights it was made from in one of two ways ([`Freshness`]):
//! - [`Freshness::Compare`]: it keeps a copy of them and compares it with the weights of
//!   every call, so a stale layout is never read (training updates weights in place, and the
//!   next forward pass sees that they differ and packs again). The comparison reads the
//!   weights once: a small fraction of the work a Winograd layout saves.
//! - [`Freshness::Epoch`]: it keeps the backend's weight epoch when it was made (bumped
//!   whenever the backend may have changed a weight: see `Cpu::weights_changed`) and a
//!   sample of the weights, and is reused while both agree. For the bf16 layouts only
//!   (the fully connected layers' panels, the convolutions' rounded filters or, for
//!   `vdpbf16ps`, their pairs, Winograd's filters transformed from rounded ones), whose
//!   point is to read fewer bytes than the
//!   f32 weights: a full comparison would read them all again on every call. (f32 packs
//!   compare: today only Winograd's transformed filters, which `ConvAlgorithm::Auto`
//!   takes for 5x5 layers and, from batch 2, 3x3 ones. The f32 packed convolution keeps
//!   no copy at all: it reads its filters in place.)
//!
//! The caller's key names the layout as well as the layer (`fc6/Bf16`, `conv1/bf16`,
//! `conv1/bf16-pairs`, `conv3/winograd/F32/k3g1c256o384`), so that two layouts of one
//! tensor never stand in
//! for each other.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Entries above this count are dropped all at once (a process that builds many models on
/// one backend does not grow without bound).
const MAX_ENTRIES: usize = 64;

/// Values of the weights an [`Freshness::Epoch`] entry samples (evenly spaced, plus the last).
const SAMPLES: usize = 256;

/// Packed weights by (layer, address and length of the weights, packed element type).
type Entries = HashMap<(String, usize, usize, TypeId), Arc<dyn Any + Send + Sync>>;

/// Packed weights, shared by the clones of a backend.
#[derive(Clone, Default)]
pub(crate) struct PackCache {
    entries: Arc<Mutex<Entries>>,
}

impl std::fmt::Debug for PackCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map_or(0, |e| e.len());
        write!(f, "PackCache({n} entries)")
    }
}

/// How an entry is known to have been made from the weights of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Every value compared (bitwise, so a NaN does not force a repack on every call).
    Compare,
    /// The backend's weight epoch and a sample of the values.
    Epoch(u64),
}

enum Source {
    Copy(Vec<f32>),
    Epoch { epoch: u64, sample: Vec<u32> },
}

impl Source {
    fn of(w: &[f32], fresh: Freshness) -> Source {
        match fresh {
            Freshness::Compare => Source::Copy(w.to_vec()),
            Freshness::Epoch(epoch) => Source::Epoch {
                epoch,
                sample: sample(w),
            },
        }
    }

    /// [`Source::of`], reusing this one's copy of the values when it has one of their
    /// length.
    fn refill(self, w: &[f32], fresh: Freshness) -> Source {
        match (self, fresh) {
            (Source::Copy(mut v), Freshness::Compare) if v.len() == w.len() => {
                v.copy_from_slice(w);
                Source::Copy(v)
            }
            (_, fresh) => Source::of(w, fresh),
        }
    }

    fn matches(&self, w: &[f32], fresh: Freshness) -> bool {
        match (self, fresh) {
            (Source::Copy(src), Freshness::Compare) => src.len() == w.len() && same_bits(src, w),
            (Source::Epoch { epoch, sample: s }, Freshness::Epoch(now)) => {
                *epoch == now && *s == sample(w)
            }
            _ => false,
        }
    }
}

/// Whether `a` and `b` hold the same bits: an OR of XORs without an early exit, in
/// parallel chunks, so that it vectorises and runs at the memory's speed (it reads every
/// filter of a Winograd layer on every pass).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)).all(|(x, y)| {
        x.iter()
            .zip(y)
            .fold(0u32, |acc, (p, q)| acc | (p.to_bits() ^ q.to_bits()))
            == 0
    })
}

/// The bits of [`SAMPLES`] evenly spaced values of `w` and of its last one.
fn sample(w: &[f32]) -> Vec<u32> {
    if w.is_empty() {
        return Vec::new();
    }
    let step = w.len().div_ceil(SAMPLES).max(1);
    w.iter()
        .step_by(step)
        .chain(w.last())
        .map(|v| v.to_bits())
        .collect()
}

pub(crate) struct Packed<T> {
    source: Source,
    pub data: Vec<T>,
}

impl PackCache {
    /// The packed form of `w` for `layer`, from the cache when it was made from the same
    /// values (as `fresh` tells), otherwise from `pack(w)` (and then cached).
    pub fn get<T: Send + Sync + 'static>(
        &self,
        layer: &str,
        w: &[f32],
        fresh: Freshness,
        pack: impl FnOnce(&[f32]) -> Vec<T>,
    ) -> Arc<Packed<T>> {
        self.get_into(layer, w, fresh, |w, out| *out = pack(w))
    }

    /// [`PackCache::get`] with `pack(w, out)` writing into `out`: the stale pack's buffer
    /// when nothing else holds it any more (the same layer's previous weights: a trained
    /// layer repacks at every step, and its buffers' pages are then already there), an
    /// empty one otherwise.
    pub fn get_into<T: Send + Sync + 'static>(
        &self,
        layer: &str,
        w: &[f32],
        fresh: Freshness,
        pack: impl FnOnce(&[f32], &mut Vec<T>),
    ) -> Arc<Packed<T>> {
        let key = (
            layer.to_string(),
            w.as_ptr() as usize,
            w.len(),
            TypeId::of::<T>(),
        );
        let found = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
            .and_then(|p| p.downcast::<Packed<T>>().ok());
        let mut stale = None;
        if let Some(p) = found {
            if p.source.matches(w, fresh) {
                return p;
            }
            // The map's reference goes first, so that ours may be the last one.
            self.entries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
            stale = Arc::try_unwrap(p).ok();
        }
        let (mut data, source) = match stale {
            Some(Packed { source, data }) => (data, source.refill(w, fresh)),
            None => (Vec::new(), Source::of(w, fresh)),
        };
        pack(w, &mut data);
        let packed = Arc::new(Packed { source, data });
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, packed.clone());
        packed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repacks_when_the_weights_change_in_place() {
        let cache = PackCache::default();
        let mut w = vec![1.0f32, 2.0, 3.0];
        let packs = std::cell::Cell::new(0);
        let double = |w: &[f32]| {
            packs.set(packs.get() + 1);
            w.iter().map(|v| v * 2.0).collect::<Vec<f32>>()
        };
        let get = |w: &[f32]| {
            cache
                .get("conv3", w, Freshness::Compare, double)
                .data
                .clone()
        };
        assert_eq!(get(&w), [2.0, 4.0, 6.0]);
        assert_eq!(get(&w), [2.0, 4.0, 6.0]);
        assert_eq!(packs.get(), 1, "same weights: packed once");
        w[2] = 5.0;
        assert_eq!(get(&w), [2.0, 4.0, 10.0]);
        assert_eq!(packs.get(), 2, "changed in place: packed again");
    }

    /// A stale pack that nothing holds any more lends its buffer to the repack (the same
    /// allocation, overwritten), and the result is the new weights' all the same; one
    /// still held elsewhere is left alone.
    #[test]
    fn a_repack_writes_into_the_stale_buffer() {
        let cache = PackCache::default();
        let mut w = vec![1.0f32; 1000];
        let times_two = |w: &[f32], out: &mut Vec<f32>| {
            out.resize(w.len(), 0.0);
            out.iter_mut().zip(w).for_each(|(o, v)| *o = v * 2.0);
        };
        let first = cache.get_into("conv3", &w, Freshness::Compare, times_two);
        let at = first.data.as_ptr();
        drop(first);
        w[7] = 4.0;
        let second = cache.get_into("conv3", &w, Freshness::Compare, times_two);
        assert_eq!(second.data.as_ptr(), at, "the stale buffer reused");
        assert_eq!((second.data[6], second.data[7]), (2.0, 8.0));
        // Held by a caller: a fresh buffer, and the caller's pack stays as it was.
        w[7] = 5.0;
        let third = cache.get_into("conv3", &w, Freshness::Compare, times_two);
        assert_ne!(third.data.as_ptr(), second.data.as_ptr());
        assert_eq!((second.data[7], third.data[7]), (8.0, 10.0));
    }

    #[test]
    fn an_epoch_entry_is_reused_until_the_epoch_moves() {
        let cache = PackCache::default();
        let mut w: Vec<f32> = (0..10_000).map(|i| i as f32).collect();
        let packs = std::cell::Cell::new(0);
        let first = |w: &[f32]| {
            packs.set(packs.get() + 1);
            vec![w[1]]
        };
        let get = |w: &[f32], e| cache.get("fc6", w, Freshness::Epoch(e), first).data[0];
        assert_eq!(get(&w, 0), 1.0);
        assert_eq!(get(&w, 0), 1.0);
        assert_eq!(packs.get(), 1, "same epoch: packed once");
        // A value the sample does not hold, changed behind the backend's back: the epoch
        // is what tells (documented on `Cpu::weights_changed`).
        w[1] = 7.0;
        assert_eq!(get(&w, 0), 1.0, "an unsampled change alone is not seen");
        assert_eq!(get(&w, 1), 7.0, "a new epoch packs again");
        // A sampled value (the last) changed: seen without a new epoch.
        *w.last_mut().unwrap() = -1.0;
        w[1] = 8.0;
        assert_eq!(get(&w, 1), 8.0);
        assert_eq!(packs.get(), 3);
        // The two kinds of entry do not stand in for each other.
        assert_eq!(cache.get("fc6", &w, Freshness::Compare, first).data[0], 8.0);
        assert_eq!(packs.get(), 4);
    }
}
