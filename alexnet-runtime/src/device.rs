//! Choosing where a network runs: `Device::auto()` takes the GPU when there is one and
//! otherwise the CPU, saying so in one line; `Device::cuda(0)` is an error without a GPU.

use crate::backend::Backend;
use crate::cpu::Cpu;
use crate::cuda::Cuda;
use crate::error::{Error, Result};
use crate::ir::{Plan, Stage};
use crate::optim::Sgd;
use crate::philox::DropoutMask;

/// A backend chosen at run time.
#[derive(Debug)]
pub enum Device {
    Cpu(Cpu),
    Cuda(Box<Cuda>),
}

/// Memory on a [`Device`].
pub enum DeviceBuffer {
    Cpu(Vec<f32>),
    Cuda(cudarc::driver::CudaSlice<f32>),
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

    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub fn parse(spec: &str) -> Result<Self> {
        match spec {
            "cpu" => Ok(Device::cpu()),
            "auto" => Ok(Device::auto()),
            "cuda" => Device::cuda(0),
            s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(n) => Device::cuda(n),
                None => Err(Error::Backend(format!(
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

fn cpu_ref(b: &DeviceBuffer) -> Result<&Vec<f32>> {
    match b {
        DeviceBuffer::Cpu(v) => Ok(v),
        _ => Err(mismatch()),
    }
}

fn cpu_mut(b: &mut DeviceBuffer) -> Result<&mut Vec<f32>> {
    match b {
        DeviceBuffer::Cpu(v) => Ok(v),
        _ => Err(mismatch()),
    }
}

fn cuda_ref(b: &DeviceBuffer) -> Result<&cudarc::driver::CudaSlice<f32>> {
    match b {
        DeviceBuffer::Cuda(v) => Ok(v),
        _ => Err(mismatch()),
    }
}

fn cuda_mut(b: &mut DeviceBuffer) -> Result<&mut cudarc::driver::CudaSlice<f32>> {
    match b {
        DeviceBuffer::Cuda(v) => Ok(v),
        _ => Err(mismatch()),
    }
}

fn mismatch() -> Error {
    Error::Backend("a buffer of one device was handed to another".into())
}

impl Backend for Device {
    type Buffer = DeviceBuffer;

    fn name(&self) -> String {
        match self {
            Device::Cpu(c) => c.name(),
            Device::Cuda(c) => c.name(),
        }
    }

    fn upload(&self, data: &[f32]) -> Result<DeviceBuffer> {
        Ok(match self {
            Device::Cpu(c) => DeviceBuffer::Cpu(c.upload(data)?),
            Device::Cuda(c) => DeviceBuffer::Cuda(c.upload(data)?),
        })
    }

    fn download(&self, buf: &DeviceBuffer) -> Result<Vec<f32>> {
        match (self, buf) {
            (Device::Cpu(c), DeviceBuffer::Cpu(b)) => c.download(b),
            (Device::Cuda(c), DeviceBuffer::Cuda(b)) => c.download(b),
            _ => Err(mismatch()),
        }
    }

    fn alloc(&self, len: usize) -> Result<DeviceBuffer> {
        Ok(match self {
            Device::Cpu(c) => DeviceBuffer::Cpu(c.alloc(len)?),
            Device::Cuda(c) => DeviceBuffer::Cuda(c.alloc(len)?),
        })
    }

    fn prepare(&self, plan: &Plan) -> Result<()> {
        match self {
            Device::Cpu(c) => c.prepare(plan),
            Device::Cuda(c) => c.prepare(plan),
        }
    }

    fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu(c) => c.synchronize(),
            Device::Cuda(c) => c.synchronize(),
        }
    }

    fn write(&self, buf: &mut DeviceBuffer, data: &[f32]) -> Result<()> {
        on_device!(self, |d, _r, m| d.write(m(buf)?, data))
    }

    fn download_prefix(&self, buf: &DeviceBuffer, len: usize) -> Result<Vec<f32>> {
        on_device!(self, |d, r, _m| d.download_prefix(r(buf)?, len))
    }

    fn prepare_training(&self, plan: &Plan) -> Result<()> {
        on_device!(self, |d, _r, _m| d.prepare_training(plan))
    }

    fn forward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        input: &DeviceBuffer,
        params: &[&DeviceBuffer],
        output: &mut DeviceBuffer,
    ) -> Result<()> {
        on_device!(self, |d, r, m| {
            let p = params.iter().map(|b| r(b)).collect::<Result<Vec<_>>>()?;
            d.forward_stage(plan, stage, batch, r(input)?, &p, m(output)?)
        })
    }

    fn backward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        x: &DeviceBuffer,
        y: &DeviceBuffer,
        dy: &mut DeviceBuffer,
        params: &[&DeviceBuffer],
        dx: Option<&mut DeviceBuffer>,
        dparams: &mut [&mut DeviceBuffer],
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
        input: &DeviceBuffer,
        output: &mut DeviceBuffer,
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
        logits: &DeviceBuffer,
        labels: &DeviceBuffer,
        dlogits: &mut DeviceBuffer,
        stats: &mut DeviceBuffer,
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

    fn sgd_step(
        &self,
        plan: &Plan,
        sgd: Sgd,
        lr_mults: &[f32],
        params: &mut [&mut DeviceBuffer],
        velocity: &mut [&mut DeviceBuffer],
        grads: &[&DeviceBuffer],
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
        own: &DeviceBuffer,
        other: &DeviceBuffer,
        whole: &mut DeviceBuffer,
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
        dx: &DeviceBuffer,
        packed: &mut DeviceBuffer,
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
        dx: &DeviceBuffer,
        received: &DeviceBuffer,
        dy: &mut DeviceBuffer,
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
