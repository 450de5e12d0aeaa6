//! Host tensors and typed batches.

use crate::error::{Error, Result};

/// A dense f32 tensor in host memory, row-major (NCHW for activations).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor of `shape` over `data`; the lengths must agree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        // A shape whose product overflows holds no data of any length.
        let len = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if len != Some(data.len()) {
            return Err(Error::Shape {
                what: format!("tensor data of {} elements", data.len()),
                expected: shape,
                found: vec![data.len()],
            });
        }
        Ok(Tensor { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let len = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; len],
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A batch of `N` images of shape `[C, H, W]` (N is a run-time size). The per-image shape
/// is part of the type, so a network declared `<3, 227, 227>` does not accept a
/// `Batch<3, 224, 224>`: that is a compile error.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch<const C: usize, const H: usize, const W: usize> {
    tensor: Tensor,
}

impl<const C: usize, const H: usize, const W: usize> Batch<C, H, W> {
    /// Elements per image.
    pub const IMAGE_LEN: usize = C * H * W;

    pub fn zeros(n: usize) -> Self {
        Batch {
            tensor: Tensor::zeros(vec![n, C, H, W]),
        }
    }

    /// `n` images from NCHW data of `n * C * H * W` elements.
    pub fn from_vec(n: usize, data: Vec<f32>) -> Result<Self> {
        Self::from_tensor(Tensor::new(vec![n, C, H, W], data)?)
    }

    /// Accepts `[N, C, H, W]`, or `[N, C]` when `H == W == 1`.
    pub fn from_tensor(tensor: Tensor) -> Result<Self> {
        let s = tensor.shape();
        let ok = match *s {
            [_, c, h, w] => (c, h, w) == (C, H, W),
            [_, c] => (c, H, W) == (C, 1, 1),
            _ => false,
        };
        if !ok {
            let n = s.first().copied().unwrap_or(0);
            return Err(Error::Shape {
                what: "batch".into(),
                expected: vec![n, C, H, W],
                found: s.to_vec(),
            });
        }
        let n = s[0];
        Ok(Batch {
            tensor: Tensor {
                shape: vec![n, C, H, W],
                data: tensor.data,
            },
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.tensor.shape[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image `i`'s `C * H * W` values.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.tensor.data[i * Self::IMAGE_LEN..(i + 1) * Self::IMAGE_LEN]
    }

    pub fn image_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.tensor.data[i * Self::IMAGE_LEN..(i + 1) * Self::IMAGE_LEN]
    }

    pub fn as_tensor(&self) -> &Tensor {
        &self.tensor
    }

    pub fn into_tensor(self) -> Tensor {
        self.tensor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_checks_shape() {
        assert!(Batch::<3, 4, 4>::from_vec(2, vec![0.0; 96]).is_ok());
        assert!(Batch::<3, 4, 4>::from_vec(2, vec![0.0; 95]).is_err());
        let e = Batch::<3, 4, 4>::from_tensor(Tensor::zeros(vec![2, 3, 4, 5])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "batch: expected shape [2, 3, 4, 4], found [2, 3, 4, 5]"
        );
        let v = Batch::<10, 1, 1>::from_tensor(Tensor::zeros(vec![2, 10])).unwrap();
        assert_eq!(v.as_tensor().shape(), &[2, 10, 1, 1]);
    }

    #[test]
    fn a_shape_whose_product_overflows_is_an_error() {
        // Checked: this panicked in debug builds ("attempt to multiply with overflow").
        let huge = vec![1 << 40, 1 << 40, 0];
        assert!(Tensor::new(huge, Vec::new()).is_err());
        assert!(Tensor::new(vec![usize::MAX, 2], vec![0.0; 2]).is_err());
        assert!(Tensor::new(vec![0, 5], Vec::new()).is_ok());
    }
}
