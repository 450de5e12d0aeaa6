//! One GPU: its context and stream, what it is, and the networks' kernels loaded in it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DriverError};

use super::binder::Binder;
use super::cache::Cache;
use super::launch::{self, driver_err, Kernel, Loaded};
use crate::error::{Error, Result};
use crate::ir::{Plan, Precision};

/// One GPU: a context, a stream, and the networks' kernels loaded for it. Each `Cuda` has
/// its own stream (and memory and modules), so two of the same GPU run side by side, as
/// the towers of a split network do on a machine with one GPU.
pub struct Cuda {
    pub(super) ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    pub(super) ordinal: usize,
    pub(super) device_name: String,
    pub(super) arch: String,
    /// Its compute capability's major version (8 for sm_80, 9 for sm_90).
    pub(super) major: i32,
    pub(super) cache: Cache,
    /// Loaded forward and exchange kernels.
    pub(super) inference: Modules,
    /// Loaded training kernels, compiled on first use.
    pub(super) training: Modules,
    /// Scratch memory of split-K sums: the weight gradients' chunks and, in tf32, the fc
    /// layers' forward parts (one stream, so one buffer serves both).
    pub(super) workspace: Mutex<Option<CudaSlice<f32>>>,
    /// The arithmetic of the forward kernels this backend loads.
    pub(super) precision: Precision,
    /// Loaded augmentation kernels by (image side, patch size, patches per image)
    /// (`augment.rs`).
    pub(super) augment: Mutex<HashMap<AugmentKey, Arc<Loaded>>>,
}

/// An augmentation kernel's image side, patch size and patches per image.
pub(super) type AugmentKey = (usize, (usize, usize), usize);

/// Loaded kernels by network name; a name may hold several plans (networks built at run
/// time).
pub(super) type Modules = Mutex<HashMap<String, Vec<(Plan, Arc<Loaded>)>>>;

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Cuda({}: {}, {}, {})",
            self.ordinal, self.device_name, self.arch, self.precision
        )
    }
}

impl Cuda {
    /// Why there is no usable GPU, or `None` when there is one.
    pub fn unavailable_reason() -> Option<String> {
        // SAFETY: only tries to dlopen libcuda by its candidate names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Some("the CUDA driver (libcuda.so.1) is not installed".into());
        }
        match CudaContext::device_count() {
            Ok(n) if n > 0 => None,
            Ok(_) => Some("no CUDA GPU found".into()),
            Err(e) => Some(format!("no CUDA GPU found ({e:?})")),
        }
    }

    /// How many GPUs there are: 0 without a driver or a GPU.
    pub fn device_count() -> usize {
        if Self::unavailable_reason().is_some() {
            return 0;
        }
        CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
    }

    /// GPU `ordinal` with the user's CUBIN cache ([`Cache::from_env`]), or
    /// [`Error::NoGpu`] when there is none.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_cache(ordinal, Cache::from_env())
    }

    /// GPU `ordinal`, keeping compiled kernels in `cache`.
    pub fn with_cache(ordinal: usize, cache: Cache) -> Result<Self> {
        if let Some(why) = Self::unavailable_reason() {
            return Err(Error::NoGpu(format!("cuda was asked for, but {why}")));
        }
        let what = format!("cuda:{ordinal}");
        let count = CudaContext::device_count().map_err(driver_err(&what, "device count"))?;
        if ordinal >= count as usize {
            return Err(Error::NoGpu(format!(
                "cuda: GPU {ordinal} asked for, {count} found"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err(&what, "context"))?;
        let stream = ctx.new_stream().map_err(driver_err(&what, "stream"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver_err(&what, "compute capability"))?;
        let device_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        Ok(Cuda {
            ctx,
            stream,
            ordinal,
            device_name,
            arch: format!("sm_{major}{minor}"),
            major,
            cache,
            inference: Mutex::new(HashMap::new()),
            training: Mutex::new(HashMap::new()),
            workspace: Mutex::new(None),
            precision: Precision::F32,
            augment: Mutex::new(HashMap::new()),
        })
    }

    /// This backend running the kernels of `precision` (`Precision::Tf32`,
    /// `Precision::Bf16` and `Precision::F16`: the convolutions' and fully connected
    /// layers' forward passes and gradients on tensor cores; see [`Precision`]); kernels it
    /// loaded before are dropped, to be loaded again in that precision. Tensor-core
    /// precisions need compute capability 8.0 or later (`mma.sync` of tf32, bf16 and f16,
    /// `cp.async`): an older GPU is an [`Error::Invalid`]
    /// that says so, as is a precision only the CPU backend computes (none today).
    pub fn with_precision(mut self, precision: Precision) -> Result<Self> {
        if !precision.on_gpu() {
            return Err(Error::Invalid(format!(
                "precision {precision} has no GPU kernels; give f32, tf32, bf16 or f16 on a GPU"
            )));
        }
        if precision.tensor_cores() && self.major < 8 {
            return Err(Error::Invalid(format!(
                "precision {precision} needs tensor cores of compute capability 8.0 or later; {} ({}) is {}",
                self.label(),
                self.device_name,
                self.arch
            )));
        }
        if precision != self.precision {
            for modules in [&mut self.inference, &mut self.training] {
                modules
                    .get_mut()
                    .map_err(|_| Error::Internal("cuda: module cache poisoned".into()))?
                    .clear();
            }
        }
        self.precision = precision;
        Ok(self)
    }

    /// The stream every kernel of this backend runs on (for vendor-library comparisons).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The architecture kernels are compiled for, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The CUBIN cache this backend compiles through.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// `cuda:N`, for messages.
    pub(super) fn label(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }

    /// Maps a driver error of `what` on this GPU: out of memory is [`Error::OutOfMemory`].
    pub(super) fn err(&self, what: impl std::fmt::Display) -> impl FnOnce(DriverError) -> Error {
        driver_err(&self.label(), what)
    }

    /// `plan`'s kernels of one phase from `modules`, or, the first time, `specs(kernels)`
    /// of its kernels (those `network!` generated, or generated now for a plan built at
    /// run time) compiled and loaded, and kept there.
    pub(super) fn loaded_in(
        &self,
        modules: &Modules,
        plan: &Plan,
        specs: impl FnOnce(&alexnet_core::ir::Kernels) -> Vec<alexnet_core::ir::KernelSpec>,
    ) -> Result<Arc<Loaded>> {
        let mut nets = modules
            .lock()
            .map_err(|_| Error::Internal("cuda: module cache poisoned".into()))?;
        let entry = nets.entry(plan.name.to_string()).or_default();
        if let Some((_, l)) = entry.iter().find(|(p, _)| p == plan) {
            return Ok(l.clone());
        }
        let kernels = alexnet_core::cuda::kernels_for(plan, &self.arch);
        let loaded = Arc::new(self.load(&specs(&kernels))?);
        entry.push((plan.clone(), loaded.clone()));
        Ok(loaded)
    }

    /// A workspace of at least `len` floats, grown on demand and reused (kernels on one
    /// stream run in order, so one workspace serves every layer).
    pub(super) fn workspace(&self, len: usize) -> Result<MutexGuard<'_, Option<CudaSlice<f32>>>> {
        let mut ws = self
            .workspace
            .lock()
            .map_err(|_| Error::Internal("cuda: workspace poisoned".into()))?;
        if ws.as_ref().is_none_or(|w| w.len() < len) {
            *ws = None;
            *ws = Some(
                self.stream
                    .alloc_zeros::<f32>(len.max(1))
                    .map_err(self.err(format!("allocating a workspace of {len} values")))?,
            );
        }
        Ok(ws)
    }

    /// Compiles (through this GPU's cache) and loads `specs` in its context.
    pub(super) fn load(&self, specs: &[alexnet_core::ir::KernelSpec]) -> Result<Loaded> {
        launch::load(&self.ctx, &self.cache, &self.arch, &self.label(), specs)
    }

    /// Launches `kernel` on this GPU's stream (see `launch::launch`).
    pub(super) fn launch(
        &self,
        kernel: &Kernel,
        batch: usize,
        binder: Binder<'_, CudaSlice<f32>>,
    ) -> Result<()> {
        launch::launch(&self.stream, &self.label(), kernel, batch, binder)
    }
}
