//! Philox4x32-10, the counter-based random number generator of Salmon et al., "Parallel
//! random numbers: as easy as 1, 2, 3" (SC 2011), as in Random123 and cuRAND. The CPU
//! backend and the generated CUDA (`kernels_templates/dropout.cuh`) compute the same
//! function, so both drop the same units for the same seed: a unit's fate is a pure
//! function of (seed, layer, step, index), with no state to carry or save.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// Ten rounds of Philox4x32 on `counter` with `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Where a dropout mask comes from: the run's seed and the training step. Each dropout
/// layer draws its own stream (its layer index is part of the counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropoutMask {
    pub seed: u64,
    pub step: u64,
}

impl DropoutMask {
    /// The 32-bit draw of element `index` of the layer with index `layer`.
    pub fn draw(&self, layer: u32, index: u32) -> u32 {
        let counter = [index, layer, self.step as u32, (self.step >> 32) as u32];
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        philox4x32_10(counter, key)[0]
    }
}

/// The draw below which a unit is dropped (`p * 2^32`) and the scale of a kept unit
/// (`1 / (1 - p)`); one definition for the CPU and the generated CUDA.
pub use crate::ir::dropout_threshold_scale;

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers from Random123's `kat_vectors` (philox4x32 with 10 rounds).
    #[test]
    fn matches_random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn drops_about_p() {
        let m = DropoutMask { seed: 7, step: 3 };
        let (t, _) = dropout_threshold_scale(0.5);
        let dropped = (0..100_000).filter(|&i| m.draw(5, i) < t).count();
        assert!((49_000..51_000).contains(&dropped), "{dropped}");
        assert_eq!(dropout_threshold_scale(0.0), (0, 1.0));
        assert_eq!(dropout_threshold_scale(0.5), (1 << 31, 2.0));
    }
}
