//! Choosing where a network runs: `Device::auto()` takes the GPU when there is one and
//! otherwise the CPU, saying so in one line; `Device::cuda(0)` is an error without a GPU.

use crate::backend::{Augment, Element, Exchange, Inference, Memory, Training, Upload, Uploader};
use crate::cpu::{Cpu, CpuUploader};
use crate::cuda::{Cuda, CudaUploader};
use crate::data::patch::{CutShape, Draw};
use crate::error::{Error, Result};
use crate::ir::{Plan, Precision, Stage};
use crate::optim::Sgd;
use crate::philox::DropoutMask;

/// A backend chosen at run time.
#[derive(Debug)]
pub enum Device {
    Cpu(Cpu),
    Cuda(Box<Cuda>),
}

/// Memory on a [`Device`].
pub enum DeviceBuffer<T: Element> {
    Cpu(Vec<T>),
    Cuda(cudarc::driver::CudaSlice<T>),
}

impl Device {
    pub fn cpu() -> Self {
        Device::Cpu(Cpu::new())
    }

    /// GPU `ordinal`; a clear error where there is none.
    pub fn cuda(ordinal: usize) -> Result<Self> {
        Cuda::new(ordinal).map(|c| Device::Cuda(Box::new(c)))
    }

    /// The first GPU, or the CPU with a one-line notice on standard error.
    pub fn auto() -> Self {
        match Cuda::unavailable_reason() {
            None => match Cuda::new(0) {
                Ok(c) => return Device::Cuda(Box::new(c)),
                Err(e) => eprintln!("alexnet: {e}; running on the CPU"),
            },
            Some(why) => eprintln!("alexnet: {why}; running on the CPU"),
        }
        Device::cpu()
    }

    /// This device computing in `precision`: a GPU takes f32, tf32, bf16 and f16
    /// ([`Cuda::with_precision`]), the CPU f32 and bf16 ([`Cpu::with_precision`]); another
    /// is an [`Error::Invalid`] that says where it runs.
    pub fn with_precision(self, precision: Precision) -> Result<Self> {
        match self {
            Device::Cuda(c) => Ok(Device::Cuda(Box::new(c.with_precision(precision)?))),
            Device::Cpu(c) => Ok(Device::Cpu(c.with_precision(precision)?)),
        }
    }

    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub fn parse(spec: &str) -> Result<Self> {
        match spec {
            "cpu" => Ok(Device::cpu()),
            "auto" => Ok(Device::auto()),
            "cuda" => Device::cuda(0),
            s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(n) => Device::cuda(n),
                None => Err(Error::Invalid(format!(
                    "unknown device `{s}`: expected cpu, cuda, cuda:N or auto"
                ))),
            },
        }
    }
}

/// Runs `$body` with `$d` the device's own backend, and `$r` / `$m` the functions that
/// view a [`DeviceBuffer`] as that backend's buffer (shared / mutable; an error for a
/// buffer of the other kind).
macro_rules! on_device {
    ($self:expr, |$d:ident, $r:ident, $m:ident| $body:expr) => {
        match $self {
            Device::Cpu($d) => {
                let ($r, $m) = (cpu_ref, cpu_mut);
                $body
            }
            Device::Cuda($d) => {
                let ($r, $m) = (cuda_ref, cuda_mut);
                let $d: &Cuda = $d;
                $body
            }
        }
    };
}

fn cpu_ref<T: Element>(b: &DeviceBuffer<T>) -> Result<&Vec<T>> {
    match b {
        DeviceBuffer::Cpu(v) => Ok(v),
        _ => Err(mismatch()),
    }
}

fn cpu_mut<T: Element>(b: &mut DeviceBuffer<T>) -> Result<&mut Vec<T>> {
    match b {
        DeviceBuffer::Cpu(v) => Ok(v),
        _ => Err(mismatch()),
    }
}

fn cuda_ref<T: Element>(b: &DeviceBuffer<T>) -> Result<&cudarc::driver::CudaSlice<T>> {
    match b {
        DeviceBuffer::Cuda(v) => Ok(v),
        _ => Err(mismatch()),
    }
}

fn cuda_mut<T: Element>(b: &mut DeviceBuffer<T>) -> Result<&mut cudarc::driver::CudaSlice<T>> {
    match b {
        DeviceBuffer::Cuda(v) => Ok(v),
        _ => Err(mismatch()),
    }
}

fn mismatch() -> Error {
    Error::Invalid("a buffer of one device was handed to another".into())
}

impl Memory for Device {
    type Buffer<T: Element> = DeviceBuffer<T>;

    fn name(&self) -> String {
        match self {
            Device::Cpu(c) => c.name(),
            Device::Cuda(c) => c.name(),
        }
    }

    fn memory_info(&self) -> Result<Option<(u64, u64)>> {
        match self {
            Device::Cpu(c) => c.memory_info(),
            Device::Cuda(c) => c.memory_info(),
        }
    }

    fn keeps_activations(&self) -> bool {
        match self {
            Device::Cpu(c) => c.keeps_activations(),
            Device::Cuda(c) => c.keeps_activations(),
        }
    }

    fn alloc<T: Element>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        Ok(match self {
            Device::Cpu(c) => DeviceBuffer::Cpu(c.alloc(len)?),
            Device::Cuda(c) => DeviceBuffer::Cuda(c.alloc(len)?),
        })
    }

    fn upload<T: Element>(&self, data: &[T]) -> Result<DeviceBuffer<T>> {
        Ok(match self {
            Device::Cpu(c) => DeviceBuffer::Cpu(c.upload(data)?),
            Device::Cuda(c) => DeviceBuffer::Cuda(c.upload(data)?),
        })
    }

    fn download<T: Element>(&self, buf: &DeviceBuffer<T>) -> Result<Vec<T>> {
        match (self, buf) {
            (Device::Cpu(c), DeviceBuffer::Cpu(b)) => c.download(b),
            (Device::Cuda(c), DeviceBuffer::Cuda(b)) => c.download(b),
            _ => Err(mismatch()),
        }
    }

    fn download_prefix<T: Element>(&self, buf: &DeviceBuffer<T>, len: usize) -> Result<Vec<T>> {
        match (self, buf) {
            (Device::Cpu(c), DeviceBuffer::Cpu(b)) => c.download_prefix(b, len),
            (Device::Cuda(c), DeviceBuffer::Cuda(b)) => c.download_prefix(b, len),
            _ => Err(mismatch()),
        }
    }

    fn write<T: Element>(&self, buf: &mut DeviceBuffer<T>, data: &[T]) -> Result<()> {
        match (self, buf) {
            (Device::Cpu(c), DeviceBuffer::Cpu(b)) => c.write(b, data),
            (Device::Cuda(c), DeviceBuffer::Cuda(b)) => c.write(b, data),
            _ => Err(mismatch()),
        }
    }

    fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu(c) => c.synchronize(),
            Device::Cuda(c) => c.synchronize(),
        }
    }
}

impl Inference for Device {
    fn precision(&self) -> Precision {
        match self {
            Device::Cpu(c) => c.precision(),
            Device::Cuda(c) => c.precision(),
        }
    }

    fn prepare(&self, plan: &Plan) -> Result<()> {
        match self {
            Device::Cpu(c) => c.prepare(plan),
            Device::Cuda(c) => c.prepare(plan),
        }
    }

    fn forward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        input: &DeviceBuffer<f32>,
        params: &[&DeviceBuffer<f32>],
        output: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        on_device!(self, |d, r, m| {
            let p = params.iter().map(|b| r(b)).collect::<Result<Vec<_>>>()?;
            d.forward_stage(plan, stage, batch, r(input)?, &p, m(output)?)
        })
    }
}

impl Training for Device {
    fn prepare_training(&self, plan: &Plan) -> Result<()> {
        match self {
            Device::Cpu(c) => c.prepare_training(plan),
            Device::Cuda(c) => c.prepare_training(plan),
        }
    }

    fn backward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        x: &DeviceBuffer<f32>,
        y: &DeviceBuffer<f32>,
        dy: &mut DeviceBuffer<f32>,
        params: &[&DeviceBuffer<f32>],
        dx: Option<&mut DeviceBuffer<f32>>,
        dparams: &mut [&mut DeviceBuffer<f32>],
    ) -> Result<()> {
        on_device!(self, |d, r, m| {
            let p = params.iter().map(|b| r(b)).collect::<Result<Vec<_>>>()?;
            let mut dp = dparams
                .iter_mut()
                .map(|b| m(b))
                .collect::<Result<Vec<_>>>()?;
            let dx = match dx {
                Some(b) => Some(m(b)?),
                None => None,
            };
            d.backward_stage(plan, stage, batch, r(x)?, r(y)?, m(dy)?, &p, dx, &mut dp)
        })
    }

    fn dropout(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        mask: DropoutMask,
        input: &DeviceBuffer<f32>,
        output: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        on_device!(self, |d, r, m| d.dropout(
            plan,
            stage,
            batch,
            mask,
            r(input)?,
            m(output)?
        ))
    }

    fn softmax_cross_entropy(
        &self,
        plan: &Plan,
        batch: usize,
        classes: usize,
        logits: &DeviceBuffer<f32>,
        labels: &DeviceBuffer<f32>,
        dlogits: &mut DeviceBuffer<f32>,
        stats: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        on_device!(self, |d, r, m| d.softmax_cross_entropy(
            plan,
            batch,
            classes,
            r(logits)?,
            r(labels)?,
            m(dlogits)?,
            m(stats)?
        ))
    }

    fn non_finite(&self, plan: &Plan, grads: &[&DeviceBuffer<f32>]) -> Result<Vec<bool>> {
        match self {
            Device::Cpu(d) => {
                let g = grads
                    .iter()
                    .map(|b| cpu_ref(b))
                    .collect::<Result<Vec<_>>>()?;
                d.non_finite(plan, &g)
            }
            Device::Cuda(d) => {
                let g = grads
                    .iter()
                    .map(|b| cuda_ref(b))
                    .collect::<Result<Vec<_>>>()?;
                d.non_finite(plan, &g)
            }
        }
    }

    fn sgd_step(
        &self,
        plan: &Plan,
        sgd: Sgd,
        lr_mults: &[f32],
        params: &mut [&mut DeviceBuffer<f32>],
        velocity: &mut [&mut DeviceBuffer<f32>],
        grads: &[&DeviceBuffer<f32>],
    ) -> Result<()> {
        on_device!(self, |d, r, m| {
            let mut p = params
                .iter_mut()
                .map(|b| m(b))
                .collect::<Result<Vec<_>>>()?;
            let mut v = velocity
                .iter_mut()
                .map(|b| m(b))
                .collect::<Result<Vec<_>>>()?;
            let g = grads.iter().map(|b| r(b)).collect::<Result<Vec<_>>>()?;
            d.sgd_step(plan, sgd, lr_mults, &mut p, &mut v, &g)
        })
    }
}

impl Augment for Device {
    fn cut_batch(
        &self,
        shape: CutShape,
        mean: &DeviceBuffer<f32>,
        images: &DeviceBuffer<u8>,
        draws: &[Draw],
        per_image: usize,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        match (self, mean, images, out) {
            (Device::Cpu(c), DeviceBuffer::Cpu(m), DeviceBuffer::Cpu(i), DeviceBuffer::Cpu(o)) => {
                c.cut_batch(shape, m, i, draws, per_image, o)
            }
            (
                Device::Cuda(c),
                DeviceBuffer::Cuda(m),
                DeviceBuffer::Cuda(i),
                DeviceBuffer::Cuda(o),
            ) => c.cut_batch(shape, m, i, draws, per_image, o),
            _ => Err(mismatch()),
        }
    }
}

/// The [`Uploader`] of a [`Device`]: its backend's.
#[derive(Debug)]
pub enum DeviceUploader {
    Cpu(CpuUploader),
    Cuda(CudaUploader),
}

impl Upload for Device {
    type Uploader = DeviceUploader;

    fn uploader(&self) -> Result<DeviceUploader> {
        Ok(match self {
            Device::Cpu(c) => DeviceUploader::Cpu(c.uploader()?),
            Device::Cuda(c) => DeviceUploader::Cuda(c.uploader()?),
        })
    }
}

impl Uploader<Device> for DeviceUploader {
    fn alloc(&mut self, len: usize) -> Result<DeviceBuffer<u8>> {
        Ok(match self {
            DeviceUploader::Cpu(u) => DeviceBuffer::Cpu(u.alloc(len)?),
            DeviceUploader::Cuda(u) => DeviceBuffer::Cuda(u.alloc(len)?),
        })
    }

    fn upload(&mut self, data: &[u8], buf: &mut DeviceBuffer<u8>) -> Result<()> {
        match (self, buf) {
            (DeviceUploader::Cpu(u), DeviceBuffer::Cpu(b)) => u.upload(data, b),
            (DeviceUploader::Cuda(u), DeviceBuffer::Cuda(b)) => u.upload(data, b),
            _ => Err(mismatch()),
        }
    }
}

impl Exchange for Device {
    fn connect(&self, other: &Device) -> Result<String> {
        match (self, other) {
            (Device::Cpu(a), Device::Cpu(b)) => a.connect(b),
            (Device::Cuda(a), Device::Cuda(b)) => a.connect(b),
            _ => Err(Error::Invalid(
                "the towers must run on the same kind of device (cpu or cuda)".into(),
            )),
        }
    }

    fn gather(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        own: &DeviceBuffer<f32>,
        other: &DeviceBuffer<f32>,
        whole: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        on_device!(self, |d, r, m| d.gather(
            plan,
            layer,
            batch,
            r(own)?,
            r(other)?,
            m(whole)?
        ))
    }

    fn pack_gradient(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        dx: &DeviceBuffer<f32>,
        packed: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        on_device!(self, |d, r, m| d.pack_gradient(
            plan,
            layer,
            batch,
            r(dx)?,
            m(packed)?
        ))
    }

    fn reduce_gradient(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        dx: &DeviceBuffer<f32>,
        received: &DeviceBuffer<f32>,
        dy: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        on_device!(self, |d, r, m| d.reduce_gradient(
            plan,
            layer,
            batch,
            r(dx)?,
            r(received)?,
            m(dy)?
        ))
    }
}
