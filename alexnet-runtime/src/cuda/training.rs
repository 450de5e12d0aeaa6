//! Training on the GPU: the training kernels, loaded on first use (inference never
//! compiles them), launched from their specs. A stage's backward pass launches its layer
//! kind's kernels in the generator's order, binding the stage's buffers by the names the
//! templates use (`x`, `y`, `dy`, `dx`, `w`, `dw`, `db`, `ws`), so no layer kind has code
//! here.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::binder::{Binder, SgdTensors};
use super::device::Cuda;
use super::launch::{batch_i32, Loaded};
use crate::backend::{check_grads, check_sgd_args, Memory, Training};
use crate::error::{Error, Result};
use crate::ir::kernels::spec::{Access, ArgTy, KernelSpec, Len};
use crate::ir::{Plan, Role, Stage};
use crate::optim::Sgd;
use crate::philox::DropoutMask;
use alexnet_core::cuda::SGD_SLOTS;

/// The roles of a stage's backward kernels, launched in the generator's order.
const BACKWARD: [Role; 5] = [
    Role::ReluMask,
    Role::WeightGrad,
    Role::WeightReduce,
    Role::DataGrad,
    Role::Backward,
];

impl Cuda {
    /// `plan`'s training kernels in this backend's precision, loaded on first use.
    pub(super) fn loaded_training(&self, plan: &Plan) -> Result<Arc<Loaded>> {
        let precision = self.precision;
        self.loaded_in(&self.training, plan, |k| k.training_in(precision))
    }
}

/// What a stage's backward pass launches: indices into its kernels, in order, and the
/// split-K workspace it needs.
#[derive(Debug, PartialEq, Eq)]
struct Steps {
    launch: Vec<usize>,
    workspace: usize,
}

/// Whether `spec` writes its parameter `name`.
fn writes(spec: &KernelSpec, name: &str) -> bool {
    spec.args
        .iter()
        .any(|a| a.name == name && !matches!(a.ty, ArgTy::Ptr(_, Access::Read)))
}

/// Which of a stage's backward kernels (`kernels`, in the generator's order) run on `batch`
/// images, with or without an input gradient, as the CPU backend computes them: the
/// weight gradient's ordered reduction only when it was split into several chunks; a
/// learned layer's input gradient only when `dx` is given; a layer without parameters
/// needs `dx`, and a `dx` that no kernel writes (the first learned layer) is an error.
/// Every error is raised before anything is launched.
fn backward_steps(
    plan: &Plan,
    stage: Stage,
    kernels: &[&KernelSpec],
    batch: usize,
    has_dx: bool,
) -> Result<Steps> {
    let layer = &plan.layers[stage.layer];
    if kernels.is_empty() {
        let why = if layer.op.kind().identity_at_inference() {
            "it is dropout: use Training::dropout"
        } else if layer.op.kind().must_be_last() {
            "it is the final softmax: the loss kernel computes its gradient"
        } else {
            "nothing before the first learned layer has one"
        };
        return Err(Error::Invalid(format!(
            "cuda: {} has no backward kernel: {why}",
            layer.name
        )));
    }
    let takes_dx = |k: &&KernelSpec| writes(k, "dx");
    if has_dx && !kernels.iter().any(takes_dx) {
        return Err(Error::Invalid(format!(
            "cuda: {} computes no input gradient (no learned layer comes before it)",
            layer.name
        )));
    }
    if !has_dx
        && kernels
            .iter()
            .any(|k| takes_dx(k) && k.role != Role::DataGrad)
    {
        return Err(Error::Invalid(format!(
            "cuda: {} needs an input gradient buffer",
            layer.name
        )));
    }
    // The split-K weight gradient's partial sums: none when there is one chunk.
    let workspace = kernels
        .iter()
        .flat_map(|k| k.args.iter())
        .find_map(|a| match a.len {
            Some(l @ Len::Split { .. }) => Some(l.needed(batch) as usize),
            _ => None,
        });
    let launch = kernels
        .iter()
        .enumerate()
        .filter(|(_, k)| match k.role {
            // One chunk: the weight gradient wrote dw and db itself.
            Role::WeightReduce => workspace.is_some_and(|w| w > 0),
            Role::DataGrad => has_dx,
            _ => true,
        })
        .map(|(i, _)| i)
        .collect();
    Ok(Steps {
        launch,
        workspace: workspace.unwrap_or(0),
    })
}

impl Training for Cuda {
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
        mut dx: Option<&mut CudaSlice<f32>>,
        dparams: &mut [&mut CudaSlice<f32>],
    ) -> Result<()> {
        if stage.fused_pool {
            return Err(Error::Invalid(format!(
                "cuda: {} fuses the pooling after it, an inference stage (Plan::inference_stages) with no backward pass; training runs Plan::stages",
                plan.stage_label(stage)
            )));
        }
        let layer = &plan.layers[stage.layer];
        let want = layer.params().len();
        if params.len() != want || dparams.len() != want {
            return Err(Error::Invalid(format!(
                "cuda: {} has {want} learned tensors; got {} and {} gradients",
                layer.name,
                params.len(),
                dparams.len()
            )));
        }
        let b = batch_i32(plan, stage.layer, batch)?;
        let loaded = self.loaded_training(plan)?;
        let kernels: Vec<_> = loaded.of_layer(stage.layer, &BACKWARD).collect();
        let specs: Vec<&KernelSpec> = kernels.iter().map(|k| &k.spec).collect();
        let steps = backward_steps(plan, stage, &specs, batch, dx.is_some())?;
        let mut ws = self.workspace(steps.workspace)?;
        for &i in &steps.launch {
            let k = kernels[i];
            let mut binder = Binder::new().read("x", x).read("y", y).int("batch", b);
            // dy is read by the gradient GEMMs, updated in place by the fused ReLU's mask.
            binder = if writes(&k.spec, "dy") {
                binder.write("dy", &mut *dy)
            } else {
                binder.read("dy", &*dy)
            };
            if let Some(w) = params.first() {
                binder = binder.read("w", w);
            }
            if let [dw, db] = &mut *dparams {
                binder = binder.write("dw", dw).write("db", db);
            }
            if let Some(d) = dx.as_deref_mut() {
                binder = binder.write("dx", d);
            }
            if let Some(w) = ws.as_mut() {
                binder = binder.write("ws", w);
            }
            self.launch(k, batch, binder)?;
        }
        Ok(())
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
        let layer = &plan.layers[stage.layer];
        let n = batch * layer.input.len();
        // The kernel's Philox counter is the element's index in the whole network.
        let towers = plan.tower.map_or(1, |t| t.of);
        if u32::try_from(n * towers).is_err() {
            return Err(Error::Invalid(format!(
                "cuda: {}: {} values exceed dropout's 32-bit counter",
                layer.name,
                n * towers
            )));
        }
        let b = batch_i32(plan, stage.layer, batch)?;
        let loaded = self.loaded_training(plan)?;
        let kernel = loaded.get(plan, stage.layer, Role::Dropout)?;
        let binder = Binder::new()
            .read("x", input)
            .write("y", output)
            .uint("seed_lo", mask.seed as u32)
            .uint("seed_hi", (mask.seed >> 32) as u32)
            .uint("step_lo", mask.step as u32)
            .uint("step_hi", (mask.step >> 32) as u32)
            .int("batch", b);
        self.launch(kernel, batch, binder)
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
        let (layer, c) = alexnet_core::cuda::logits_of(plan).ok_or_else(|| {
            Error::Invalid(format!(
                "cuda: `{}` has no logits (an empty network, or one tower's plan)",
                plan.name
            ))
        })?;
        if c != classes {
            return Err(Error::Invalid(format!(
                "cuda: the loss kernel of `{}` takes {c} classes, not {classes}",
                plan.name
            )));
        }
        let b = batch_i32(plan, layer, batch)?;
        let loaded = self.loaded_training(plan)?;
        let kernel = loaded.get(plan, layer, Role::Loss)?;
        // The kernel reads a logit by label only for labels in [0, classes) (others give
        // a NaN loss); the caller checks them.
        let binder = Binder::new()
            .read("logits", logits)
            .read("labels", labels)
            .write("dlogits", dlogits)
            .write("stats", stats)
            .int("batch", b);
        self.launch(kernel, batch, binder)
    }

    fn non_finite(&self, plan: &Plan, grads: &[&CudaSlice<f32>]) -> Result<Vec<bool>> {
        let n = check_grads("cuda", plan, grads.len(), |i| grads[i].len())?.len();
        let loaded = self.loaded_training(plan)?;
        let mut chunks = Vec::new();
        let mut first = 0;
        while first < n {
            let count = (n - first).min(SGD_SLOTS);
            let kernel = loaded.get(plan, 0, Role::Finite { first, count })?;
            let mut flags = self.alloc::<f32>(count)?;
            self.write(&mut flags, &vec![0.0; count])?;
            let mut t = SgdTensors {
                w: [0; SGD_SLOTS],
                v: [0; SGD_SLOTS],
                g: [0; SGD_SLOTS],
                lr: [0.0; SGD_SLOTS],
            };
            // The guards record the buffers' use by this launch when dropped (after it).
            let mut guards = Vec::with_capacity(count);
            for (j, g) in grads[first..first + count].iter().enumerate() {
                let (g, gg) = g.device_ptr(&self.stream);
                t.g[j] = g;
                guards.push(gg);
            }
            let binder = Binder::new().sgd("t", t).write("flags", &mut flags);
            self.launch(kernel, 0, binder)?;
            drop(guards);
            chunks.push(flags);
            first += count;
        }
        let mut out = Vec::with_capacity(n);
        for flags in &chunks {
            out.extend(self.download(flags)?.into_iter().map(|f| f != 0.0));
        }
        Ok(out)
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
        let counts = [params.len(), velocity.len(), grads.len(), lr_mults.len()];
        let n = check_sgd_args("cuda", plan, counts, |i| {
            [params[i].len(), velocity[i].len(), grads[i].len()]
        })?
        .len();
        let loaded = self.loaded_training(plan)?;
        let mut first = 0;
        while first < n {
            let count = (n - first).min(SGD_SLOTS);
            let kernel = loaded.get(plan, 0, Role::Sgd { first, count })?;
            let mut t = SgdTensors {
                w: [0; SGD_SLOTS],
                v: [0; SGD_SLOTS],
                g: [0; SGD_SLOTS],
                lr: [0.0; SGD_SLOTS],
            };
            // The guards record the buffers' use by this launch when dropped (after it).
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
            let binder = Binder::new()
                .sgd("t", t)
                .float("momentum", sgd.momentum)
                .float("decay", sgd.weight_decay);
            self.launch(kernel, 0, binder)?;
            drop(guards);
            first += count;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Conv, Fc, Layer, Pool, Relu, Shape};

    /// conv(6, 3, pad = 1) relu maxpool(3, stride = 2) fc(5) on 4x9x9 images.
    fn plan() -> Plan {
        let layer = |name: &'static str, op, input, output| Layer {
            name: name.into(),
            op,
            input,
            output,
        };
        let (i, c, p) = (
            Shape::new(4, 9, 9),
            Shape::new(6, 9, 9),
            Shape::new(6, 4, 4),
        );
        let conv = Conv {
            out: 6,
            k: 3,
            stride: 1,
            pad: 1,
            groups: 1,
        };
        let pool = Pool {
            max: true,
            k: 3,
            stride: 2,
        };
        Plan {
            name: "T".into(),
            input: i,
            split: 1,
            layers: vec![
                layer("conv1", Op::Conv(conv), i, c),
                layer("relu1", Op::Relu(Relu), c, c),
                layer("pool1", Op::Pool(pool), c, p),
                layer("fc2", Op::Fc(Fc { out: 5 }), p, Shape::new(5, 1, 1)),
            ]
            .into(),
            tower: None,
            generated: None,
        }
    }

    use crate::ir::Op;

    /// The roles `backward_steps` launches for `stage` of the plan.
    fn roles(stage: usize, batch: usize, has_dx: bool) -> Result<(Vec<Role>, usize)> {
        let plan = plan();
        let kernels = alexnet_core::cuda::generate(&plan);
        let st = plan.stages()[stage];
        let specs: Vec<&KernelSpec> = kernels
            .training
            .iter()
            .filter(|k| k.layer() == st.layer && BACKWARD.contains(&k.role))
            .collect();
        let steps = backward_steps(&plan, st, &specs, batch, has_dx)?;
        Ok((
            steps.launch.iter().map(|&i| specs[i].role).collect(),
            steps.workspace,
        ))
    }

    #[test]
    fn the_reduction_runs_when_the_weight_gradient_has_several_chunks() {
        use Role::*;
        let plan = plan();
        let k = alexnet_core::cuda::generate(&plan);
        for (stage, layer) in [(0, 0), (2, 3)] {
            let w = k.find(layer, WeightGrad).unwrap();
            for batch in [1, 3, 128] {
                let chunks = w.launch.grid(batch)[0] as usize;
                let (r, ws) = roles(stage, batch, false).unwrap();
                assert_eq!(r.contains(&WeightReduce), chunks > 1, "{layer} {batch}");
                let want = if chunks > 1 {
                    chunks * w.workspace_per_chunk()
                } else {
                    0
                };
                assert_eq!(ws, want, "{layer} {batch}");
            }
        }
        // The fc layer's 1 value per image: one chunk at batch 1, several at 128.
        assert_eq!(roles(2, 1, false).unwrap(), (vec![WeightGrad], 0));
        assert!(roles(2, 128, false).unwrap().0.contains(&WeightReduce));
        // The fused ReLU's mask comes first.
        assert_eq!(roles(0, 1, false).unwrap().0[..2], [ReluMask, WeightGrad]);
    }

    #[test]
    fn the_first_learned_layer_computes_no_input_gradient() {
        let e = roles(0, 4, true).unwrap_err().to_string();
        assert!(e.contains("computes no input gradient"), "{e}");
    }

    #[test]
    fn a_layer_without_parameters_needs_its_input_gradient() {
        assert_eq!(roles(1, 2, true).unwrap(), (vec![Role::Backward], 0));
        let e = roles(1, 2, false).unwrap_err().to_string();
        assert!(e.contains("needs an input gradient buffer"), "{e}");
    }

    #[test]
    fn a_later_learned_layer_computes_its_input_gradient_when_given_one() {
        use Role::*;
        let (with, _) = roles(2, 3, true).unwrap();
        assert_eq!(with.last(), Some(&DataGrad));
        let (without, _) = roles(2, 3, false).unwrap();
        assert!(!without.contains(&DataGrad) && without.contains(&WeightGrad));
    }
}
