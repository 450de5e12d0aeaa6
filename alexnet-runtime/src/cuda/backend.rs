//! The CUDA backend: each network's generated kernels, compiled by NVRTC for the device's
//! own architecture (a disk cache makes the second start fast), loaded once per context,
//! launched with the geometry fixed at compile time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use rayon::prelude::*;

use super::cache;
use super::train::LoadedTraining;
use crate::backend::{check_exchange, Backend};
use crate::error::{Error, Result};
use crate::ir::{KernelLaunch, Op, Plan, Stage};
use crate::optim::Sgd;
use crate::philox::DropoutMask;

pub(super) fn driver_err(
    what: impl std::fmt::Display,
) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    move |e| Error::Backend(format!("cuda: {what}: {e:?}"))
}

/// `batch` as the kernels' `int`, when every index of the layer fits in 32 bits.
pub(super) fn batch_i32(plan: &Plan, layer: usize, batch: usize) -> Result<i32> {
    let l = &plan.layers[layer];
    let per = l.input.len().max(l.output.len()) as u64;
    i32::try_from(batch)
        .ok()
        .filter(|b| (*b as u64) * per <= i32::MAX as u64)
        .ok_or_else(|| {
            Error::Backend(format!(
                "cuda: batch {batch} too large for {} (32-bit indexing)",
                l.name
            ))
        })
}

/// The launch configuration of a generated kernel for `batch` images.
pub(super) fn launch_config(launch: &KernelLaunch, batch: usize) -> LaunchConfig {
    let [gx, gy, gz] = launch.grid(batch);
    LaunchConfig {
        grid_dim: (gx, gy, gz),
        block_dim: (launch.block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One GPU: a context, a stream, and the networks compiled for it.
pub struct Cuda {
    ctx: Arc<CudaContext>,
    pub(super) stream: Arc<CudaStream>,
    ordinal: usize,
    device_name: String,
    arch: String,
    /// Compiled networks, by name; a name may hold several plans (networks built at run time).
    nets: Mutex<HashMap<String, Vec<LoadedPlan>>>,
    /// Their training kernels, compiled on first use.
    pub(super) training: Mutex<HashMap<String, Vec<TrainingPlan>>>,
    /// Scratch memory of the weight gradients' chunked sums.
    pub(super) workspace: Mutex<Option<CudaSlice<f32>>>,
}

/// A plan and its kernels.
type LoadedPlan = (Plan, Arc<Loaded>);
/// A plan and its training kernels.
pub(super) type TrainingPlan = (Plan, Arc<LoadedTraining>);

/// A network's kernels, loaded in this context.
struct Loaded {
    /// By layer index: the launch geometry and the function.
    kernels: HashMap<usize, (KernelLaunch, CudaFunction)>,
    /// In a tower's plan, by the layer they feed: the exchanges' geometry and their
    /// gather, pack and reduce functions.
    exchanges: HashMap<usize, (KernelLaunch, [CudaFunction; 3])>,
    _modules: Vec<Arc<CudaModule>>,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Cuda({}: {}, {})",
            self.ordinal, self.device_name, self.arch
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

    /// GPU `ordinal`, or a clear error when there is none. Each `Cuda` has its own stream
    /// (and memory and modules), so two of the same GPU run side by side, as the towers of
    /// a split network do on a machine with one GPU.
    pub fn new(ordinal: usize) -> Result<Self> {
        if let Some(why) = Self::unavailable_reason() {
            return Err(Error::Backend(format!("cuda was asked for, but {why}")));
        }
        let count = CudaContext::device_count().map_err(driver_err("device count"))?;
        if ordinal >= count as usize {
            return Err(Error::Backend(format!(
                "cuda: GPU {ordinal} asked for, {count} found"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err("context"))?;
        let stream = ctx.new_stream().map_err(driver_err("stream"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver_err("compute capability"))?;
        let device_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        Ok(Cuda {
            ctx,
            stream,
            ordinal,
            device_name,
            arch: format!("sm_{major}{minor}"),
            nets: Mutex::new(HashMap::new()),
            training: Mutex::new(HashMap::new()),
            workspace: Mutex::new(None),
        })
    }

    /// The stream every kernel of this backend runs on (for vendor-library comparisons).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The architecture kernels are compiled for, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    fn loaded(&self, plan: &Plan) -> Result<Arc<Loaded>> {
        let mut nets = self
            .nets
            .lock()
            .map_err(|_| Error::Backend("cuda: module cache poisoned".into()))?;
        let entry = nets.entry(plan.name.to_string()).or_default();
        if let Some((_, l)) = entry.iter().find(|(p, _)| p == plan) {
            return Ok(l.clone());
        }
        let cuda = alexnet_codegen::cuda::render(plan);
        let exchanges = alexnet_codegen::cuda_exchange::render(plan);
        let mut units: Vec<(&str, &str)> = cuda
            .kernel_sources
            .iter()
            .zip(&cuda.kernels)
            .map(|(src, k)| (src.as_str(), k.name.as_ref()))
            .collect();
        for e in &exchanges {
            for f in [&e.gather, &e.pack, &e.reduce] {
                units.push((&e.source, f));
            }
        }
        let mut functions = self.compile_and_load(&units)?.into_iter();
        let mut kernels = HashMap::new();
        let mut modules = Vec::new();
        for (k, (module, f)) in cuda.kernels.into_iter().zip(functions.by_ref()) {
            modules.push(module);
            kernels.insert(k.layer, (k, f));
        }
        let mut exchange_fns = HashMap::new();
        for e in exchanges {
            let mut fs = functions.by_ref().take(3).map(|(m, f)| {
                modules.push(m);
                f
            });
            if let (Some(g), Some(p), Some(r)) = (fs.next(), fs.next(), fs.next()) {
                exchange_fns.insert(e.layer, (e.launch, [g, p, r]));
            }
        }
        let loaded = Arc::new(Loaded {
            kernels,
            exchanges: exchange_fns,
            _modules: modules,
        });
        entry.push((plan.clone(), loaded.clone()));
        Ok(loaded)
    }
}

impl Cuda {
    /// Compiles each `(source, kernel name)` (in parallel, through the CUBIN cache; units
    /// with the same source are compiled once) and loads the named functions.
    pub(super) fn compile_and_load(
        &self,
        units: &[(&str, &str)],
    ) -> Result<Vec<(Arc<CudaModule>, CudaFunction)>> {
        let opts = vec!["--ptxas-options=-v".to_string()];
        let mut unique: Vec<(&str, &str)> = Vec::new();
        for &(src, name) in units {
            if !unique.iter().any(|(s, _)| *s == src) {
                unique.push((src, name));
            }
        }
        let cubins: Vec<Result<Vec<u8>>> = unique
            .par_iter()
            .map(|(src, name)| cache::cubin(src, &format!("{name}.cu"), &self.arch, &opts))
            .collect();
        let mut modules: HashMap<&str, Arc<CudaModule>> = HashMap::new();
        for ((src, name), cubin) in unique.iter().zip(cubins) {
            let module = self
                .ctx
                .load_module(Ptx::from_binary(cubin?))
                .map_err(driver_err(format!("loading {name}")))?;
            modules.insert(src, module);
        }
        units
            .iter()
            .map(|(src, name)| {
                let module = modules[src].clone();
                let f = module
                    .load_function(name)
                    .map_err(driver_err(format!("finding {name}")))?;
                Ok((module, f))
            })
            .collect()
    }
}

impl Cuda {
    /// The first `len` values of `buf`, a buffer of another context (the other tower's
    /// GPU), copied into this one: a peer copy on this stream, which waits for an event
    /// recorded on the source's stream (cudarc's `memcpy_dtod` across contexts). `None`
    /// when `buf` is in this context already (a tower on the same GPU), where kernels read
    /// it directly, ordered by its write event.
    fn peer_copy(&self, buf: &CudaSlice<f32>, len: usize) -> Result<Option<CudaSlice<f32>>> {
        if buf.stream().context().cu_ctx() == self.ctx.cu_ctx() {
            return Ok(None);
        }
        let mut local = self.alloc(len)?;
        self.stream
            .memcpy_dtod(&buf.slice(..len), &mut local)
            .map_err(driver_err("peer copy"))?;
        Ok(Some(local))
    }

    /// Launches function `which` (0 gather, 1 pack, 2 reduce) of the exchange before
    /// `layer` of `plan` on `batch` images, with the kernel's inputs and output in the
    /// order of `kernels_templates/exchange.cu`, all checked by the caller
    /// ([`check_exchange`]).
    fn launch_exchange(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        which: usize,
        inputs: &[&CudaSlice<f32>],
        output: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let loaded = self.loaded(plan)?;
        let (launch, fs) = loaded.exchanges.get(&layer).ok_or_else(|| {
            Error::Backend(format!(
                "cuda: no exchange kernels before layer {layer} of {}",
                plan.name
            ))
        })?;
        let batch_i32 = batch_i32(plan, layer, batch)?;
        let cfg = launch_config(launch, batch);
        let mut args = self.stream.launch_builder(&fs[which]);
        for x in inputs {
            args.arg(*x);
        }
        args.arg(output).arg(&batch_i32);
        // SAFETY: the pointers pushed match the kernel's parameters in
        // kernels_templates/exchange.cu (gather: own, other, whole; pack: dx, packed;
        // reduce: dx, received, dy; then the batch as an int); `check_exchange` checked
        // that each buffer holds the batch's part or whole input; every buffer is in this
        // context (the other tower's were peer-copied here when not); the grid covers
        // batch x part threads, which the kernels bound; 32-bit indices do not overflow
        // (checked by `batch_i32`, the whole input being the layer's input).
        unsafe { args.launch(cfg) }.map_err(driver_err(format!("launching {}", launch.name)))?;
        Ok(())
    }
}

impl Backend for Cuda {
    type Buffer = CudaSlice<f32>;

    fn name(&self) -> String {
        format!(
            "cuda:{} ({}, {})",
            self.ordinal, self.device_name, self.arch
        )
    }

    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        self.stream.clone_htod(data).map_err(driver_err("upload"))
    }

    fn download(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(buf).map_err(driver_err("download"))
    }

    fn write(&self, buf: &mut CudaSlice<f32>, data: &[f32]) -> Result<()> {
        if buf.len() < data.len() {
            return Err(Error::Backend(format!(
                "cuda: writing {} values into a buffer of {}",
                data.len(),
                buf.len()
            )));
        }
        let mut view = buf.slice_mut(..data.len());
        self.stream
            .memcpy_htod(data, &mut view)
            .map_err(driver_err("upload"))
    }

    fn download_prefix(&self, buf: &CudaSlice<f32>, len: usize) -> Result<Vec<f32>> {
        let view = buf.slice(..len.min(buf.len()));
        self.stream
            .clone_dtoh(&view)
            .map_err(driver_err("download"))
    }

    fn prepare_training(&self, plan: &Plan) -> Result<()> {
        self.loaded_training(plan).map(|_| ())
    }

    fn backward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        x: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        dy: &mut CudaSlice<f32>,
        params: &[&CudaSlice<f32>],
        dx: Option<&mut CudaSlice<f32>>,
        dparams: &mut [&mut CudaSlice<f32>],
    ) -> Result<()> {
        self.backward_stage_cuda(plan, stage, batch, x, y, dy, params, dx, dparams)
    }

    fn dropout(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        mask: DropoutMask,
        input: &CudaSlice<f32>,
        output: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.dropout_cuda(plan, stage, batch, mask, input, output)
    }

    fn softmax_cross_entropy(
        &self,
        plan: &Plan,
        batch: usize,
        classes: usize,
        logits: &CudaSlice<f32>,
        labels: &CudaSlice<f32>,
        dlogits: &mut CudaSlice<f32>,
        stats: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.softmax_cross_entropy_cuda(plan, batch, classes, logits, labels, dlogits, stats)
    }

    fn sgd_step(
        &self,
        plan: &Plan,
        sgd: Sgd,
        lr_mults: &[f32],
        params: &mut [&mut CudaSlice<f32>],
        velocity: &mut [&mut CudaSlice<f32>],
        grads: &[&CudaSlice<f32>],
    ) -> Result<()> {
        self.sgd_step_cuda(plan, sgd, lr_mults, params, velocity, grads)
    }

    /// Two `Cuda`s of one GPU share its context: kernels read each other's buffers in
    /// place. Between two GPUs the exchanges are peer copies (`cuMemcpyPeerAsync`); the
    /// driver copies directly where the two GPUs can reach each other and through the
    /// host where not. Peer access is not turned on: cudarc allocates from the devices'
    /// memory pools, which ignore a context's peer access (`cuMemPoolSetAccess` would be
    /// needed, and no machine with two GPUs has been lent to test it).
    fn connect(&self, other: &Cuda) -> Result<String> {
        if self.ctx.cu_ctx() == other.ctx.cu_ctx() {
            return Ok(format!("cuda:{}, one context: direct reads", self.ordinal));
        }
        let mut can = 0;
        // SAFETY: a query about two device handles that cudarc obtained from the driver;
        // `can` is a valid place for its answer.
        let asked = unsafe {
            cudarc::driver::sys::cuDeviceCanAccessPeer(
                &mut can,
                self.ctx.cu_device(),
                other.ctx.cu_device(),
            )
        }
        .result();
        let path = match (asked, can) {
            (Ok(()), 0) => "no peer path: the driver stages them through the host",
            (Ok(()), _) => "the GPUs can reach each other",
            (Err(_), _) => "peer path unknown",
        };
        Ok(format!(
            "cuda:{} from cuda:{}: peer copies ({path})",
            self.ordinal, other.ordinal
        ))
    }

    fn gather(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        own: &CudaSlice<f32>,
        other: &CudaSlice<f32>,
        whole: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let bufs = [
            ("own", own.len(), false),
            ("other", other.len(), false),
            ("whole", whole.len(), true),
        ];
        let (_, part) = check_exchange("cuda", plan, layer, batch, &bufs)?;
        let staged = self.peer_copy(other, batch * part)?;
        let other = staged.as_ref().unwrap_or(other);
        self.launch_exchange(plan, layer, batch, 0, &[own, other], whole)
    }

    fn pack_gradient(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        dx: &CudaSlice<f32>,
        packed: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let bufs = [("dx", dx.len(), true), ("packed", packed.len(), false)];
        check_exchange("cuda", plan, layer, batch, &bufs)?;
        self.launch_exchange(plan, layer, batch, 1, &[dx], packed)
    }

    fn reduce_gradient(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        dx: &CudaSlice<f32>,
        received: &CudaSlice<f32>,
        dy: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let bufs = [
            ("dx", dx.len(), true),
            ("received", received.len(), false),
            ("dy", dy.len(), false),
        ];
        let (_, part) = check_exchange("cuda", plan, layer, batch, &bufs)?;
        let staged = self.peer_copy(received, batch * part)?;
        let received = staged.as_ref().unwrap_or(received);
        self.launch_exchange(plan, layer, batch, 2, &[dx, received], dy)
    }

    fn alloc(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(driver_err("alloc"))
    }

    /// Compiles (or finds in the cache) and loads `plan`'s kernels; later calls for the
    /// same plan return at once.
    fn prepare(&self, plan: &Plan) -> Result<()> {
        self.loaded(plan).map(|_| ())
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_err("synchronize"))
    }

    fn forward_stage(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        input: &CudaSlice<f32>,
        params: &[&CudaSlice<f32>],
        output: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let layer = &plan.layers[stage.layer];
        let (n_in, n_out) = (batch * layer.input.len(), batch * layer.output.len());
        if input.len() < n_in || output.len() < n_out {
            return Err(Error::Backend(format!(
                "cuda: {}: buffers of {} and {} values, the stage needs {n_in} and {n_out}",
                layer.name,
                input.len(),
                output.len()
            )));
        }
        let batch_i32 = batch_i32(plan, stage.layer, batch)?;
        let loaded = self.loaded(plan)?;
        let (launch, f) = loaded
            .kernels
            .get(&stage.layer)
            .ok_or_else(|| Error::Backend(format!("cuda: no kernel for {}", layer.name)))?;
        let cfg = launch_config(launch, batch);
        let mut args = self.stream.launch_builder(f);
        args.arg(input);
        if matches!(layer.op, Op::Conv { .. } | Op::Fc { .. }) {
            let [w, b] = params else {
                return Err(Error::Backend(format!(
                    "cuda: {} needs a weight and a bias",
                    layer.name
                )));
            };
            for (spec, p) in layer.params().iter().zip([w, b]) {
                if p.len() < spec.len() {
                    return Err(Error::Backend(format!(
                        "cuda: {} holds {} values, the layer needs {}",
                        spec.name,
                        p.len(),
                        spec.len()
                    )));
                }
            }
            args.arg(*w).arg(*b);
        }
        args.arg(output).arg(&batch_i32);
        // SAFETY: the arguments match the kernel's signature in kernels_templates/ (x, [w,
        // bias,] y, batch: pointers to f32 and an int); the buffers hold at least the
        // batch's input and output and the layer's parameters (all checked above); the grid covers exactly the work the
        // kernel's bounds checks admit; 32-bit indices do not overflow (checked).
        unsafe { args.launch(cfg) }.map_err(driver_err(format!("launching {}", launch.name)))?;
        Ok(())
    }
}
