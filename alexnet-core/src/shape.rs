//! Per-image shapes, and which tower of a split network a plan is.

use std::fmt;

/// A per-image activation shape `[C, H, W]`. Fully connected outputs are `[N, 1, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    pub const fn new(c: usize, h: usize, w: usize) -> Self {
        Shape { c, h, w }
    }

    /// Elements per image.
    pub const fn len(&self) -> usize {
        self.c * self.h * self.w
    }

    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for `[N, 1, 1]`, the shape of a fully connected layer's output.
    pub const fn is_vector(&self) -> bool {
        self.h == 1 && self.w == 1
    }

    pub const fn to_array(self) -> [usize; 3] {
        [self.c, self.h, self.w]
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_vector() {
            write!(f, "{}", self.c)
        } else {
            write!(f, "{}x{}x{}", self.c, self.h, self.w)
        }
    }
}

/// Tower `index` of `of` (see `Plan::tower`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TowerOf {
    pub index: usize,
    pub of: usize,
}
