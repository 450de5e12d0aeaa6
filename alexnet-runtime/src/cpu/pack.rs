//! Weights kept in the layout a kernel prefers (Winograd-transformed filters), made once and
//! reused while the weights stay the same.
//!
//! Each entry keeps a copy of the weights it was made from and compares it with the weights
//! of every call, so a stale layout is never read: training updates weights in place, and
//! the next forward pass sees that they differ and packs again. The comparison reads the
//! weights once, a small fraction of the work a packed layout saves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Entries above this count are dropped all at once (a process that builds many models on
/// one backend does not grow without bound).
const MAX_ENTRIES: usize = 64;

/// Packed weights by (layer, address of the weights).
type Entries = HashMap<(String, usize), Arc<Packed>>;

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

pub(crate) struct Packed {
    source: Vec<f32>,
    pub data: Vec<f32>,
}

impl PackCache {
    /// The packed form of `w` for `layer`, from the cache when it was made from the same
    /// values, otherwise from `pack(w)` (and then cached).
    pub fn get(
        &self,
        layer: &str,
        w: &[f32],
        pack: impl FnOnce(&[f32]) -> Vec<f32>,
    ) -> Arc<Packed> {
        let key = (layer.to_string(), w.as_ptr() as usize);
        let found = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        if let Some(p) = found {
            // Bitwise, so that a NaN in the weights does not force a repack every call.
            if p.source.len() == w.len()
                && p.source
                    .iter()
                    .zip(w)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            {
                return p;
            }
        }
        let packed = Arc::new(Packed {
            source: w.to_vec(),
            data: pack(w),
        });
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
            w.iter().map(|v| v * 2.0).collect()
        };
        assert_eq!(cache.get("conv3", &w, double).data, [2.0, 4.0, 6.0]);
        assert_eq!(cache.get("conv3", &w, double).data, [2.0, 4.0, 6.0]);
        assert_eq!(packs.get(), 1, "same weights: packed once");
        w[2] = 5.0;
        assert_eq!(cache.get("conv3", &w, double).data, [2.0, 4.0, 10.0]);
        assert_eq!(packs.get(), 2, "changed in place: packed again");
    }
}
