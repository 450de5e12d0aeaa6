//! The CUDA backend's training kernels: loading them (on first use, so inference never
//! compiles them) and launching them with the geometry `alexnet_codegen::cuda_train`
//! generated.

use std::collections::HashMap;
use std::sync::Arc;

use alexnet_codegen::cuda_train::{self, Role, SGD_SLOTS};
use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, PushKernelArg,
};

use super::backend::{batch_i32, driver_err, launch_config, Cuda};
use crate::error::{Error, Result};
use crate::ir::{KernelLaunch, Op, Plan, Stage};
use crate::optim::Sgd;
use crate::philox::DropoutMask;

/// A network's training kernels, loaded in one context.
pub(super) struct LoadedTraining {
    kernels: HashMap<(usize, Role), Kernel>,
    _modules: Vec<Arc<CudaModule>>,
}

struct Kernel {
    launch: KernelLaunch,
    function: CudaFunction,
    workspace_per_chunk: usize,
}

/// The pointer table of one SGD launch (`SgdTensors` in kernels_templates/sgd.cu).
#[repr(C)]
#[derive(Clone, Copy)]
struct SgdTensors {
    w: [u64; SGD_SLOTS],
    v: [u64; SGD_SLOTS],
    g: [u64; SGD_SLOTS],
    lr: [f32; SGD_SLOTS],
}

// SAFETY: plain old data with the C layout of `SgdTensors` in sgd.cu (3 x SGD_SLOTS
// 8-byte device pointers, then SGD_SLOTS floats; no padding between them).
unsafe impl DeviceRepr for SgdTensors {}

fn need(what: &str, buf: &CudaSlice<f32>, len: usize) -> Result<()> {
    if buf.len() < len {
        return Err(Error::Backend(format!(
            "cuda: {what} buffer holds {} values, {len} needed",
            buf.len()
        )));
    }
    Ok(())
}

impl Cuda {
    pub(super) fn loaded_training(&self, plan: &Plan) -> Result<Arc<LoadedTraining>> {
        let mut nets = self
            .training
            .lock()
            .map_err(|_| Error::Backend("cuda: module cache poisoned".into()))?;
        let entry = nets.entry(plan.name.to_string()).or_default();
        if let Some((_, l)) = entry.iter().find(|(p, _)| p == plan) {
            return Ok(l.clone());
        }
        let t = cuda_train::render(plan);
        let units: Vec<(&str, &str)> = t
            .kernels
            .iter()
            .map(|k| (k.source.as_str(), k.launch.name.as_ref()))
            .collect();
        let functions = self.compile_and_load(&units)?;
        let mut kernels = HashMap::new();
        let mut modules = Vec::new();
        for (k, (module, function)) in t.kernels.into_iter().zip(functions) {
            modules.push(module);
            kernels.insert(
                (k.launch.layer, k.role),
                Kernel {
                    launch: k.launch,
                    function,
                    workspace_per_chunk: k.workspace_per_chunk,
                },
            );
        }
        let loaded = Arc::new(LoadedTraining {
            kernels,
            _modules: modules,
        });
        entry.push((plan.clone(), loaded.clone()));
        Ok(loaded)
    }

    fn kernel<'a>(
        loaded: &'a LoadedTraining,
        plan: &Plan,
        layer: usize,
        role: Role,
    ) -> Result<&'a Kernel> {
        loaded.kernels.get(&(layer, role)).ok_or_else(|| {
            Error::Backend(format!(
                "cuda: no {role:?} kernel for {}",
                plan.layers[layer].name
            ))
        })
    }

    /// A workspace of at least `len` floats, grown on demand and reused (kernels on one
    /// stream run in order, so one workspace serves every layer).
    fn workspace(&self, len: usize) -> Result<std::sync::MutexGuard<'_, Option<CudaSlice<f32>>>> {
        let mut ws = self
            .workspace
            .lock()
            .map_err(|_| Error::Backend("cuda: workspace poisoned".into()))?;
        if ws.as_ref().is_none_or(|w| w.len() < len) {
            *ws = None;
            *ws = Some(
                self.stream
                    .alloc_zeros::<f32>(len.max(1))
                    .map_err(driver_err("workspace"))?,
            );
        }
        Ok(ws)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_stage_cuda(
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
        let layer = &plan.layers[stage.layer];
        let (n_in, n_out) = (batch * layer.input.len(), batch * layer.output.len());
        need(&format!("{} input", layer.name), x, n_in)?;
        need(&format!("{} output", layer.name), y, n_out)?;
        need(&format!("{} output gradient", layer.name), dy, n_out)?;
        if let Some(d) = dx.as_deref() {
            need(&format!("{} input gradient", layer.name), d, n_in)?;
        }
        // The learned tensors must hold the plan's shapes: the kernels index them by it.
        for ((spec, p), d) in layer.params().iter().zip(params).zip(dparams.iter()) {
            need(&spec.name, p, spec.len())?;
            need(&format!("{} gradient", spec.name), d, spec.len())?;
        }
        if params.len() != layer.params().len() || dparams.len() != layer.params().len() {
            return Err(Error::Backend(format!(
                "cuda: {} has {} learned tensors; got {} and {} gradients",
                layer.name,
                layer.params().len(),
                params.len(),
                dparams.len()
            )));
        }
        let b = batch_i32(plan, stage.layer, batch)?;
        let loaded = self.loaded_training(plan)?;
        let id = stage.layer;
        let no_dx = || Error::Backend(format!("cuda: {} needs an input gradient", layer.name));
        match layer.op {
            Op::Conv { .. } | Op::Fc { .. } => {
                let (Some(w), [dw, db]) = (params.first().copied(), dparams) else {
                    return Err(Error::Backend(format!(
                        "cuda: {} needs a weight and the gradients of its weight and bias",
                        layer.name
                    )));
                };
                if stage.fused_relu {
                    let k = Self::kernel(&loaded, plan, id, Role::ReluMask)?;
                    let mut a = self.stream.launch_builder(&k.function);
                    // In place: the kernel reads y and dy and writes dy (no __restrict__).
                    let (dyp, _g) = dy.device_ptr_mut(&self.stream);
                    a.arg(y).arg(&dyp).arg(&dyp).arg(&b);
                    // SAFETY: relu_bwd.cu (y, dy, dx, batch); y and dy hold batch * LEN
                    // floats (checked); dx aliases dy, which the kernel allows.
                    unsafe { a.launch(launch_config(&k.launch, batch)) }
                        .map_err(driver_err(format!("launching {}", k.launch.name)))?;
                }
                let k = Self::kernel(&loaded, plan, id, Role::WeightGrad)?;
                let chunks = k.launch.grid(batch)[0] as usize;
                let ws_len = if chunks > 1 {
                    chunks * k.workspace_per_chunk
                } else {
                    1
                };
                let mut ws = self.workspace(ws_len)?;
                let ws = ws
                    .as_mut()
                    .ok_or_else(|| Error::Backend("cuda: workspace".into()))?;
                {
                    let mut a = self.stream.launch_builder(&k.function);
                    a.arg(x)
                        .arg(&*dy)
                        .arg(&mut **dw)
                        .arg(&mut **db)
                        .arg(&mut *ws)
                        .arg(&b);
                    // SAFETY: gemm_bwd_weight.cu (x, dy, dw, db, ws, batch); x and dy hold
                    // the batch (checked), dw and db the layer's weight and bias (the
                    // plan's shapes), ws chunks * G * OG * (KCOL + 1) floats when chunks > 1.
                    unsafe { a.launch(launch_config(&k.launch, batch)) }
                        .map_err(driver_err(format!("launching {}", k.launch.name)))?;
                }
                if chunks > 1 {
                    let r = Self::kernel(&loaded, plan, id, Role::WeightReduce)?;
                    let mut a = self.stream.launch_builder(&r.function);
                    a.arg(&*ws).arg(&mut **dw).arg(&mut **db).arg(&b);
                    // SAFETY: the reduction of the same translation unit (ws, dw, db,
                    // batch), over the chunks the weight gradient just wrote.
                    unsafe { a.launch(launch_config(&r.launch, batch)) }
                        .map_err(driver_err(format!("launching {}", r.launch.name)))?;
                }
                if let Some(dx) = dx {
                    let k = Self::kernel(&loaded, plan, id, Role::DataGrad)?;
                    let mut a = self.stream.launch_builder(&k.function);
                    a.arg(&*dy).arg(w).arg(dx).arg(&b);
                    // SAFETY: gemm_bwd_data.cu (dy, w, dx, batch); sizes checked above.
                    unsafe { a.launch(launch_config(&k.launch, batch)) }
                        .map_err(driver_err(format!("launching {}", k.launch.name)))?;
                }
            }
            Op::Softmax => {
                return Err(Error::Backend(format!(
                    "cuda: {} is the final softmax; the loss kernel computes its gradient",
                    layer.name
                )))
            }
            Op::Relu | Op::MaxPool { .. } | Op::AvgPool { .. } | Op::Lrn { .. } => {
                let dx = dx.ok_or_else(no_dx)?;
                let k = Self::kernel(&loaded, plan, id, Role::Backward)?;
                let mut a = self.stream.launch_builder(&k.function);
                // relu reads the output; pooling and LRN the input.
                match layer.op {
                    Op::Relu => a.arg(y),
                    _ => a.arg(x),
                };
                a.arg(&*dy).arg(dx).arg(&b);
                // SAFETY: relu_bwd.cu (y, dy, dx, batch), pool_bwd.cu and lrn_bwd.cu (x, dy, dx, batch); every buffer
                // holds the batch (checked above).
                unsafe { a.launch(launch_config(&k.launch, batch)) }
                    .map_err(driver_err(format!("launching {}", k.launch.name)))?;
            }
            Op::Dropout { .. } => {
                return Err(Error::Backend(format!(
                    "cuda: {} is dropout; use Backend::dropout",
                    layer.name
                )))
            }
        }
        Ok(())
    }

    pub(super) fn dropout_cuda(
        &self,
        plan: &Plan,
        stage: Stage,
        batch: usize,
        mask: DropoutMask,
        input: &CudaSlice<f32>,
        output: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let layer = &plan.layers[stage.layer];
        let n = batch * layer.input.len();
        need(&format!("{} input", layer.name), input, n)?;
        need(&format!("{} output", layer.name), output, n)?;
        let b = batch_i32(plan, stage.layer, batch)?;
        // The kernel's Philox counter is the element's index in the whole network.
        let towers = plan.tower.map_or(1, |t| t.of);
        if u32::try_from(n * towers).is_err() {
            return Err(Error::Backend(format!(
                "cuda: {}: {} values exceed dropout's 32-bit counter",
                layer.name,
                n * towers
            )));
        }
        let loaded = self.loaded_training(plan)?;
        let k = Self::kernel(&loaded, plan, stage.layer, Role::Dropout)?;
        let (s0, s1) = (mask.seed as u32, (mask.seed >> 32) as u32);
        let (t0, t1) = (mask.step as u32, (mask.step >> 32) as u32);
        let mut a = self.stream.launch_builder(&k.function);
        a.arg(input)
            .arg(output)
            .arg(&s0)
            .arg(&s1)
            .arg(&t0)
            .arg(&t1)
            .arg(&b);
        // SAFETY: dropout.cu (in, out, seed_lo, seed_hi, step_lo, step_hi, batch); both
        // buffers hold the batch (checked); indices fit an int (checked).
        unsafe { a.launch(launch_config(&k.launch, batch)) }
            .map_err(driver_err(format!("launching {}", k.launch.name)))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn softmax_cross_entropy_cuda(
        &self,
        plan: &Plan,
        batch: usize,
        classes: usize,
        logits: &CudaSlice<f32>,
        labels: &CudaSlice<f32>,
        dlogits: &mut CudaSlice<f32>,
        stats: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (layer, c) = cuda_train::logits_of(plan)
            .ok_or_else(|| Error::Backend("cuda: an empty network has no logits".into()))?;
        if c != classes {
            return Err(Error::Backend(format!(
                "cuda: the loss kernel of `{}` takes {c} classes, not {classes}",
                plan.name
            )));
        }
        need("logits", logits, batch * classes)?;
        need("labels", labels, batch)?;
        need("logit gradient", dlogits, batch * classes)?;
        need("loss statistics", stats, 3)?;
        let b = batch_i32(plan, layer, batch)?;
        let loaded = self.loaded_training(plan)?;
        let k = Self::kernel(&loaded, plan, layer, Role::Loss)?;
        let mut a = self.stream.launch_builder(&k.function);
        a.arg(logits).arg(labels).arg(dlogits).arg(stats).arg(&b);
        // SAFETY: loss.cu (logits, labels, dlogits, stats, batch); sizes checked above; the
        // kernel reads a logit by label only for labels in [0, classes) (others give a NaN
        // loss).
        unsafe { a.launch(launch_config(&k.launch, batch)) }
            .map_err(driver_err(format!("launching {}", k.launch.name)))?;
        Ok(())
    }

    pub(super) fn sgd_step_cuda(
        &self,
        plan: &Plan,
        sgd: Sgd,
        lr_mults: &[f32],
        params: &mut [&mut CudaSlice<f32>],
        velocity: &mut [&mut CudaSlice<f32>],
        grads: &[&CudaSlice<f32>],
    ) -> Result<()> {
        let counts = [params.len(), velocity.len(), grads.len(), lr_mults.len()];
        let n = crate::backend::check_sgd_args("cuda", plan, counts, |i| {
            [params[i].len(), velocity[i].len(), grads[i].len()]
        })?
        .len();
        let loaded = self.loaded_training(plan)?;
        let mut first = 0;
        while first < n {
            let count = (n - first).min(SGD_SLOTS);
            let k = Self::kernel(&loaded, plan, 0, Role::Sgd { first, count })?;
            let mut t = SgdTensors {
                w: [0; SGD_SLOTS],
                v: [0; SGD_SLOTS],
                g: [0; SGD_SLOTS],
                lr: [0.0; SGD_SLOTS],
            };
            let mut guards = Vec::with_capacity(3 * count);
            let range = first..first + count;
            let tensors = params[range.clone()]
                .iter_mut()
                .zip(velocity[range.clone()].iter_mut())
                .zip(&grads[range.clone()])
                .zip(&lr_mults[range]);
            for (j, (((p, v), g), m)) in tensors.enumerate() {
                let (w, gw) = p.device_ptr_mut(&self.stream);
                let (v, gv) = v.device_ptr_mut(&self.stream);
                let (g, gg) = g.device_ptr(&self.stream);
                (t.w[j], t.v[j], t.g[j]) = (w, v, g);
                t.lr[j] = sgd.lr * m;
                guards.extend([gw, gv, gg]);
            }
            let mut a = self.stream.launch_builder(&k.function);
            a.arg(&t).arg(&sgd.momentum).arg(&sgd.weight_decay);
            // SAFETY: sgd.cu (SgdTensors by value, momentum, decay); every pointer is a
            // live allocation of this context holding its tensor's length (checked), and
            // stays alive past the launch (the borrows and guards outlive it).
            unsafe { a.launch(launch_config(&k.launch, 0)) }
                .map_err(driver_err(format!("launching {}", k.launch.name)))?;
            drop(guards);
            first += count;
        }
        Ok(())
    }
}
