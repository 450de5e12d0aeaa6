//! Choosing where a network runs: `Device::auto()` takes the GPU when there is one and
//! otherwise the CPU, saying so in one line; `Device::cuda(0)` is an error without a GPU.

use crate::backend::Backend;
use crate::cpu::Cpu;
use crate::cuda::Cuda;
use crate::error::{Error, Result};
use crate::ir::{Plan, Stage};

/// A backend chosen at run time.
#[derive(Debug)]
pub enum Device {
    Cpu(Cpu),
    Cuda(Cuda),
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
        Cuda::new(ordinal).map(Device::Cuda)
    }

    /// The first GPU, or the CPU with a one-line notice on standard error.
    pub fn auto() -> Self {
        match Cuda::unavailable_reason() {
            None => match Cuda::new(0) {
                Ok(c) => return Device::Cuda(c),
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

    fn forward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        input: &DeviceBuffer,
        params: &[&DeviceBuffer],
        output: &mut DeviceBuffer,
    ) -> Result<()> {
        match (self, input, output) {
            (Device::Cpu(c), DeviceBuffer::Cpu(x), DeviceBuffer::Cpu(y)) => {
                let p: Option<Vec<&Vec<f32>>> = params
                    .iter()
                    .map(|b| {
                        if let DeviceBuffer::Cpu(v) = b {
                            Some(v)
                        } else {
                            None
                        }
                    })
                    .collect();
                c.forward_stage(plan, stage, batch, x, &p.ok_or_else(mismatch)?, y)
            }
            (Device::Cuda(c), DeviceBuffer::Cuda(x), DeviceBuffer::Cuda(y)) => {
                let p: Option<Vec<&cudarc::driver::CudaSlice<f32>>> = params
                    .iter()
                    .map(|b| {
                        if let DeviceBuffer::Cuda(v) = b {
                            Some(v)
                        } else {
                            None
                        }
                    })
                    .collect();
                c.forward_stage(plan, stage, batch, x, &p.ok_or_else(mismatch)?, y)
            }
            _ => Err(mismatch()),
        }
    }
}
