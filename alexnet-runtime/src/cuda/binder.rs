//! Binding a launch's arguments by name: the buffers and values a caller offers
//! ([`Binder`]) resolved against a kernel's spec into the values of its parameters, in the
//! order of its signature, each checked for its type and, for a buffer, for the values the
//! spec says the kernel touches. Kept apart from the driver so that it runs in tests
//! without a GPU (over host vectors).

use cudarc::driver::{CudaSlice, DeviceRepr};

use crate::error::{Error, Result};
use crate::ir::kernels::spec::{Access, ArgTy, Elem, KernelSpec};

/// The pointer table of one SGD launch (`SgdTensors` in kernels_templates/sgd.cuh).
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct SgdTensors {
    pub w: [u64; alexnet_core::cuda::SGD_SLOTS],
    pub v: [u64; alexnet_core::cuda::SGD_SLOTS],
    pub g: [u64; alexnet_core::cuda::SGD_SLOTS],
    pub lr: [f32; alexnet_core::cuda::SGD_SLOTS],
}

// SAFETY: plain old data with the C layout of `SgdTensors` in sgd.cuh (3 x SGD_SLOTS
// 8-byte device pointers, then SGD_SLOTS floats; no padding between them).
unsafe impl DeviceRepr for SgdTensors {}

/// A value bound to a kernel parameter, in the order of the kernel's signature.
pub(super) enum Value<'a, B> {
    In(&'a B),
    Out(&'a mut B),
    /// Bytes the kernel reads (a prepared set's images).
    Bytes(&'a CudaSlice<u8>),
    Int(i32),
    Uint(u32),
    Float(f32),
    /// Boxed: the table is large (64 slots of three pointers and a float).
    Sgd(Box<SgdTensors>),
}

/// The buffers and values offered to a launch, by parameter name. A kernel takes the
/// ones its spec names; offering more is fine (a stage's backward kernels share one
/// set), leaving one out is an error.
pub(super) struct Binder<'a, B> {
    reads: Vec<(&'static str, &'a B)>,
    writes: Vec<(&'static str, Option<&'a mut B>)>,
    bytes: Vec<(&'static str, &'a CudaSlice<u8>)>,
    scalars: Vec<(&'static str, Value<'a, B>)>,
}

/// A device buffer of f32 values, as far as binding is concerned: how many it holds.
pub(super) trait Buffer {
    fn len(&self) -> usize;
}

impl Buffer for CudaSlice<f32> {
    fn len(&self) -> usize {
        CudaSlice::len(self)
    }
}

impl<'a, B: Buffer> Binder<'a, B> {
    pub fn new() -> Self {
        Binder {
            reads: Vec::new(),
            writes: Vec::new(),
            bytes: Vec::new(),
            scalars: Vec::new(),
        }
    }

    /// A buffer the kernel may only read.
    pub fn read(mut self, name: &'static str, buf: &'a B) -> Self {
        self.reads.push((name, buf));
        self
    }

    /// A buffer the kernel may read or write (taken by the one parameter of that name).
    pub fn write(mut self, name: &'static str, buf: &'a mut B) -> Self {
        self.writes.push((name, Some(buf)));
        self
    }

    /// A buffer of bytes the kernel may only read.
    pub fn bytes(mut self, name: &'static str, buf: &'a CudaSlice<u8>) -> Self {
        self.bytes.push((name, buf));
        self
    }

    pub fn int(mut self, name: &'static str, v: i32) -> Self {
        self.scalars.push((name, Value::Int(v)));
        self
    }

    pub fn uint(mut self, name: &'static str, v: u32) -> Self {
        self.scalars.push((name, Value::Uint(v)));
        self
    }

    pub fn float(mut self, name: &'static str, v: f32) -> Self {
        self.scalars.push((name, Value::Float(v)));
        self
    }

    pub fn sgd(mut self, name: &'static str, t: SgdTensors) -> Self {
        self.scalars.push((name, Value::Sgd(Box::new(t))));
        self
    }

    /// The values of `spec`'s parameters, in order, each checked against the parameter.
    pub fn resolve(mut self, spec: &KernelSpec, batch: usize) -> Result<Vec<Value<'a, B>>> {
        let name = spec.name();
        let bad = |m: String| Error::Internal(format!("cuda: {name}: {m}"));
        let mut out = Vec::with_capacity(spec.args.len());
        for arg in spec.args.iter() {
            let value = match arg.ty {
                ArgTy::Ptr(Elem::U8, Access::Read) => {
                    let b = self
                        .bytes
                        .iter()
                        .find(|(n, _)| *n == arg.name)
                        .map(|(_, b)| *b)
                        .ok_or_else(|| bad(format!("`{}` is not bound", arg.name)))?;
                    let needed = arg
                        .len
                        .ok_or_else(|| bad(format!("pointer `{}` has no length", arg.name)))?
                        .needed(batch);
                    if (b.len() as u64) < needed {
                        return Err(Error::BufferTooSmall {
                            what: format!("cuda: {name}: `{}`", arg.name),
                            len: b.len(),
                            needed: needed as usize,
                        });
                    }
                    Value::Bytes(b)
                }
                ArgTy::Ptr(elem, access) => {
                    if elem != Elem::F32 {
                        return Err(Error::Unsupported(format!(
                            "cuda: {name}: {} kernels are not implemented yet",
                            elem.name()
                        )));
                    }
                    let taken = self
                        .writes
                        .iter_mut()
                        .find(|(n, b)| *n == arg.name && b.is_some())
                        .and_then(|(_, b)| b.take());
                    let value = match (taken, access) {
                        (Some(b), Access::Read) => Value::In(b),
                        (Some(b), _) => Value::Out(b),
                        (None, Access::Read) => {
                            match self.reads.iter().find(|(n, _)| *n == arg.name) {
                                Some((_, b)) => Value::In(*b),
                                None => return Err(bad(format!("`{}` is not bound", arg.name))),
                            }
                        }
                        (None, _) => {
                            return Err(bad(format!(
                                "`{}` is written but not bound writable",
                                arg.name
                            )))
                        }
                    };
                    let len = match &value {
                        Value::In(b) => b.len(),
                        Value::Out(b) => b.len(),
                        _ => 0,
                    };
                    let needed = arg
                        .len
                        .ok_or_else(|| bad(format!("pointer `{}` has no length", arg.name)))?
                        .needed(batch);
                    if (len as u64) < needed {
                        return Err(Error::BufferTooSmall {
                            what: format!("cuda: {name}: `{}`", arg.name),
                            len,
                            needed: needed as usize,
                        });
                    }
                    value
                }
                ty => {
                    let i = self
                        .scalars
                        .iter()
                        .position(|(n, _)| *n == arg.name)
                        .ok_or_else(|| bad(format!("`{}` is not bound", arg.name)))?;
                    let (_, v) = self.scalars.swap_remove(i);
                    let fits = matches!(
                        (ty, &v),
                        (ArgTy::Int, Value::Int(_))
                            | (ArgTy::Uint, Value::Uint(_))
                            | (ArgTy::Float, Value::Float(_))
                            | (ArgTy::Struct("SgdTensors"), Value::Sgd(_))
                    );
                    if !fits {
                        return Err(bad(format!(
                            "`{}` bound to a value of another type",
                            arg.name
                        )));
                    }
                    v
                }
            };
            out.push(value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::kernels::spec::{KernelSpec, Len};
    use crate::ir::{Conv, Layer, Op, Plan, Shape};

    impl Buffer for Vec<f32> {
        fn len(&self) -> usize {
            Vec::len(self)
        }
    }

    /// conv(6, 3) on 4x9x9 images: its forward kernel (x, w, bias, y, batch).
    fn conv_forward() -> KernelSpec {
        let (i, o) = (Shape::new(4, 9, 9), Shape::new(6, 7, 7));
        let conv = Conv {
            out: 6,
            k: 3,
            stride: 1,
            pad: 0,
            groups: 1,
        };
        let plan = Plan {
            name: "T".into(),
            input: i,
            split: 1,
            layers: vec![Layer {
                name: "conv1".into(),
                op: Op::Conv(conv),
                input: i,
                output: o,
            }]
            .into(),
            tower: None,
            generated: None,
        };
        alexnet_core::cuda::forward(&plan, alexnet_core::ir::Precision::F32).remove(0)
    }

    fn lens(v: &[Value<'_, Vec<f32>>]) -> Vec<String> {
        v.iter()
            .map(|v| match v {
                Value::In(b) => format!("in {}", b.len()),
                Value::Out(b) => format!("out {}", b.len()),
                Value::Int(i) => format!("int {i}"),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn arguments_resolve_in_the_signature_s_order_checked() {
        let k = conv_forward();
        let names: Vec<&str> = k.args.iter().map(|a| a.name).collect();
        assert_eq!(names, ["x", "w", "bias", "y", "batch"]);
        assert_eq!(k.args[0].len, Some(Len::PerImage(4 * 81)));
        let (x, w, b) = (vec![0.0; 2 * 324], vec![0.0; 6 * 36], vec![0.0; 6]);
        let (mut y, extra) = (vec![0.0; 2 * 294], vec![0.0; 1]);
        // Bound in any order, with more than the kernel takes.
        let v = Binder::new()
            .write("y", &mut y)
            .read("unused", &extra)
            .read("bias", &b)
            .read("w", &w)
            .read("x", &x)
            .int("batch", 2)
            .resolve(&k, 2)
            .unwrap();
        assert_eq!(lens(&v), ["in 648", "in 216", "in 6", "out 588", "int 2"]);
    }

    #[test]
    fn a_wrong_binding_is_an_error_before_any_launch() {
        let k = conv_forward();
        let (x, w, b) = (vec![0.0; 2 * 324], vec![0.0; 6 * 36], vec![0.0; 6]);
        let mut y = vec![0.0; 2 * 294];
        // A buffer too short for the batch.
        let e = Binder::new()
            .read("x", &x)
            .read("w", &w)
            .read("bias", &b)
            .write("y", &mut y)
            .int("batch", 3)
            .resolve(&k, 3)
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                Error::BufferTooSmall {
                    len: 648,
                    needed: 972,
                    ..
                }
            ),
            "{e:?}"
        );
        // An output bound read-only.
        let e = Binder::new()
            .read("x", &x)
            .read("w", &w)
            .read("bias", &b)
            .read("y", &y)
            .int("batch", 2)
            .resolve(&k, 2)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("`y` is written but not bound writable"),
            "{e}"
        );
        // A parameter left out, and a scalar of the wrong type.
        let e = Binder::new()
            .read("x", &x)
            .read("bias", &b)
            .write("y", &mut y)
            .int("batch", 2)
            .resolve(&k, 2)
            .err()
            .unwrap();
        assert!(e.to_string().contains("`w` is not bound"), "{e}");
        let e = Binder::new()
            .read("x", &x)
            .read("w", &w)
            .read("bias", &b)
            .write("y", &mut y)
            .float("batch", 2.0)
            .resolve(&k, 2)
            .err()
            .unwrap();
        assert!(e.to_string().contains("another type"), "{e}");
    }
}
