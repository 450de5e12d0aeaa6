//! Loading a plan's generated kernels (compiled by NVRTC through the CUBIN cache) and
//! launching them from their specs.
//!
//! A launch binds buffers and values to the kernel's parameters by name ([`Binder`]); the
//! launcher walks the spec's parameter list, which is the generated stub's signature, and
//! checks each binding's type and length against it before anything reaches the driver.
//! So the argument order lives in one place (the template's declaration, checked against
//! the spec by `alexnet-core`'s tests), and a short buffer is an error, not an
//! out-of-bounds write.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use rayon::prelude::*;

use super::binder::{Binder, Value};
use super::cache::Cache;
use crate::error::{Error, Result};
use crate::ir::kernels::spec::{KernelLaunch, KernelSpec, Role};
use crate::ir::Plan;

/// The launch configuration of a generated kernel for `batch` images.
pub(super) fn launch_config(launch: &KernelLaunch, batch: usize) -> LaunchConfig {
    let [gx, gy, gz] = launch.grid(batch);
    LaunchConfig {
        grid_dim: (gx, gy, gz),
        block_dim: (launch.block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `batch` as the kernels' `int`, when every index of layer `layer` fits in 32 bits.
pub(super) fn batch_i32(plan: &Plan, layer: usize, batch: usize) -> Result<i32> {
    let l = &plan.layers[layer];
    let per = l.input.len().max(l.output.len()) as u64;
    i32::try_from(batch)
        .ok()
        .filter(|b| (*b as u64) * per <= i32::MAX as u64)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "cuda: batch {batch} too large for {} (32-bit indexing)",
                l.name
            ))
        })
}

/// A kernel loaded in a context, with its spec.
pub(super) struct Kernel {
    pub spec: KernelSpec,
    pub function: CudaFunction,
}

/// A plan's kernels of one phase (forward and exchanges, or training), loaded.
pub(super) struct Loaded {
    /// In the generator's order (a stage's backward kernels in launch order).
    kernels: Vec<Kernel>,
    by_role: HashMap<(usize, Role), usize>,
    _modules: Vec<Arc<CudaModule>>,
}

impl Loaded {
    /// The kernel of `role` for layer `layer`.
    pub fn get(&self, plan: &Plan, layer: usize, role: Role) -> Result<&Kernel> {
        self.by_role
            .get(&(layer, role))
            .map(|&i| &self.kernels[i])
            .ok_or_else(|| {
                Error::Internal(format!(
                    "cuda: no {role:?} kernel for layer {layer} of `{}`",
                    plan.name
                ))
            })
    }

    /// The kernel of `role` for layer `layer`, if the plan has one.
    pub fn find(&self, layer: usize, role: Role) -> Option<&Kernel> {
        self.by_role.get(&(layer, role)).map(|&i| &self.kernels[i])
    }

    /// Every kernel, in the order they were loaded.
    pub fn all(&self) -> &[Kernel] {
        &self.kernels
    }

    /// Every kernel of layer `layer` with one of `roles`, in launch order.
    pub fn of_layer<'a>(
        &'a self,
        layer: usize,
        roles: &'a [Role],
    ) -> impl Iterator<Item = &'a Kernel> + 'a {
        self.kernels
            .iter()
            .filter(move |k| k.spec.layer() == layer && roles.contains(&k.spec.role))
    }
}

/// Compiles `specs` for `arch` (in parallel, through `cache`; identical sources once) and
/// loads them in `ctx`; `device` names the GPU in errors.
pub(super) fn load(
    ctx: &Arc<CudaContext>,
    cache: &Cache,
    arch: &str,
    device: &str,
    specs: &[KernelSpec],
) -> Result<Loaded> {
    let opts = vec!["--ptxas-options=-v".to_string()];
    let sources: Vec<String> = specs.iter().map(alexnet_core::cuda::source).collect();
    let mut unique: Vec<usize> = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        if !unique.iter().any(|&j| sources[j] == *s) {
            unique.push(i);
        }
    }
    let cubins: Vec<Result<Vec<u8>>> = unique
        .par_iter()
        .map(|&i| {
            let name = format!("{}.cu", specs[i].name());
            cache.cubin(&sources[i], &name, arch, &opts)
        })
        .collect();
    let mut modules: Vec<(&str, Arc<CudaModule>)> = Vec::new();
    for (&i, cubin) in unique.iter().zip(cubins) {
        let module = ctx
            .load_module(Ptx::from_binary(cubin?))
            .map_err(driver_err(device, format!("loading {}", specs[i].name())))?;
        modules.push((&sources[i], module));
    }
    let mut kernels = Vec::with_capacity(specs.len());
    let mut by_role = HashMap::new();
    for (spec, source) in specs.iter().zip(&sources) {
        let module = modules
            .iter()
            .find(|(s, _)| *s == source.as_str())
            .map(|(_, m)| m.clone())
            .ok_or_else(|| Error::Internal(format!("{}: module not loaded", spec.name())))?;
        let function = module
            .load_function(spec.name())
            .map_err(driver_err(device, format!("finding {}", spec.name())))?;
        by_role.insert((spec.layer(), spec.role), kernels.len());
        kernels.push(Kernel {
            spec: spec.clone(),
            function,
        });
    }
    Ok(Loaded {
        kernels,
        by_role,
        _modules: modules.into_iter().map(|(_, m)| m).collect(),
    })
}

/// Launches `kernel` on `stream` (of GPU `device`) on `batch` images with the arguments
/// `binder` names. Every parameter of the spec must be bound, with a value of its type
/// and, for a pointer, a buffer holding what the spec says the kernel touches for this
/// batch.
pub(super) fn launch(
    stream: &CudaStream,
    device: &str,
    kernel: &Kernel,
    batch: usize,
    binder: Binder<'_, CudaSlice<f32>>,
) -> Result<()> {
    let spec = &kernel.spec;
    let mut values = binder.resolve(spec, batch)?;
    let mut args = stream.launch_builder(&kernel.function);
    for v in values.iter_mut() {
        match v {
            Value::In(b) => args.arg(*b),
            Value::Out(b) => args.arg(&mut **b),
            Value::Bytes(b) => args.arg(*b),
            Value::Int(i) => args.arg(&*i),
            Value::Uint(u) => args.arg(&*u),
            Value::Float(f) => args.arg(&*f),
            Value::Sgd(t) => args.arg(&**t),
        };
    }
    // SAFETY: the arguments are the kernel's parameters in the order of its signature,
    // which the generated stub declares from `spec.args` (and which alexnet-core's tests
    // check against the template's declaration); `resolve` checked each one's type and
    // that every buffer holds what the spec says the kernel reads or writes for `batch`
    // images, and the grid is the spec's, which the kernel's bounds checks match; callers
    // bind `batch` through `batch_i32`, so 32-bit indices do not overflow. Every buffer is
    // of this context (the other tower's are peer-copied here first), and cudarc orders
    // the launch after the buffers' last writes. An SGD pointer table holds live buffers
    // checked by `check_sgd_args`, whose guards the caller keeps past the launch.
    unsafe { args.launch(launch_config(&spec.launch, batch)) }
        .map_err(driver_err(device, format!("launching {}", spec.name())))?;
    Ok(())
}

/// Maps a driver error of `what` on GPU `device`: out of memory is [`Error::OutOfMemory`],
/// anything else [`Error::Driver`].
pub(super) fn driver_err(
    device: &str,
    what: impl std::fmt::Display,
) -> impl FnOnce(DriverError) -> Error {
    let device = device.to_string();
    move |e| {
        if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            Error::OutOfMemory {
                device,
                what: what.to_string(),
            }
        } else {
            Error::Driver {
                what: format!("{device}: {what}"),
                message: format!("{e:?}"),
            }
        }
    }
}
