//! A planned network with its parameters on a backend.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use crate::backend::{Augment, Inference, F32};
use crate::data::patch::{Cut, Draw};
use crate::error::{Error, Result};
use crate::ir::{ParamSpec, Plan};
use crate::tensor::Tensor;
use crate::weights::{self, NamedTensor, MOMENTUM_PREFIX, STATE_FORMAT};

/// A layer's learned tensors on a backend (weight and bias; none for most layers).
pub(crate) type LayerParams<B> = Vec<(ParamSpec, F32<B>)>;

/// A callback that sees each stage's output: `(layer name, values)`.
type Inspect<'a> = &'a mut dyn FnMut(&str, &[f32]);

/// A network (its [`Plan`]) with its parameters in a backend's memory. The generated
/// network types wrap one; it can also be used directly with a plan built at run time.
pub struct Model<B: Inference> {
    backend: B,
    plan: Plan,
    /// Per layer of the plan, its learned tensors (weight, bias; none for most layers).
    params: Vec<LayerParams<B>>,
    /// Fill activation buffers with NaN before each pass, so that an element a kernel
    /// fails to write shows up in the output (for tests).
    poison: bool,
    /// The mean image of the last cut of [`Model::cut_into`] on the backend, with its host
    /// copy (to tell whether the next cut's is the same).
    mean: Mutex<Option<(Vec<f32>, F32<B>)>>,
    /// The forward pass's two activation buffers of the last call, with their length, kept
    /// for the next call of the same batch size where the backend says so
    /// ([`crate::backend::Memory::keeps_activations`]: the CPU, where fresh ones cost a page fault per 4 KiB
    /// written, 18.6 MB for AlexNet's conv1 at batch 16, most of a stage's time). A call
    /// running while another holds them makes its own.
    spare: Mutex<Option<(usize, [F32<B>; 2])>>,
}

impl<B: Inference> std::fmt::Debug for Model<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("network", &self.plan.name)
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl<B: Inference> Model<B> {
    /// The paper's initialisation from a seed; see [`weights::paper_init`].
    pub fn init(backend: B, plan: Plan, seed: u64) -> Result<Self> {
        let tensors = weights::paper_init(&plan, seed);
        Self::from_tensors(backend, plan, tensors)
    }

    /// Loads a safetensors file; every missing, extra or mis-shaped tensor is reported,
    /// and a NaN or infinite value is an error naming its tensor. A training state
    /// (`Trainer::save`) loads too: its momentum is left out.
    pub fn load(backend: B, plan: Plan, path: &Path) -> Result<Self> {
        // One read: the metadata and the tensors are of the same file.
        let (mut tensors, meta) = weights::read_safetensors_with_metadata(path)?;
        if meta.get("format").map(String::as_str) == Some(STATE_FORMAT) {
            tensors.retain(|t| !t.name.starts_with(MOMENTUM_PREFIX));
        }
        let ordered = weights::match_plan(&plan, tensors, Some(path))?;
        weights::check_finite(&ordered, Some(path))?;
        Self::upload(backend, plan, ordered)
    }

    /// A model from host tensors named as PyTorch names them (`conv1.weight`, ...).
    pub fn from_tensors(backend: B, plan: Plan, tensors: Vec<NamedTensor>) -> Result<Self> {
        let ordered = weights::match_plan(&plan, tensors, None)?;
        Self::upload(backend, plan, ordered)
    }

    fn upload(backend: B, plan: Plan, ordered: Vec<NamedTensor>) -> Result<Self> {
        backend.prepare(&plan)?;
        let mut tensors = ordered.into_iter();
        let mut params = Vec::with_capacity(plan.layers.len());
        for layer in plan.layers.iter() {
            let mut own = Vec::new();
            for spec in layer.params() {
                let t = tensors
                    .next()
                    .ok_or_else(|| Error::Internal(format!("no data for `{}`", spec.name)))?;
                own.push((spec, backend.upload(&t.data)?));
            }
            params.push(own);
        }
        Ok(Model {
            backend,
            plan,
            params,
            poison: false,
            mean: Mutex::new(None),
            spare: Mutex::new(None),
        })
    }

    /// Every parameter, downloaded to the host.
    pub fn tensors(&self) -> Result<Vec<NamedTensor>> {
        self.params
            .iter()
            .flatten()
            .map(|(spec, buf)| {
                Ok(NamedTensor {
                    name: spec.name.clone(),
                    shape: spec.shape.clone(),
                    data: self.backend.download(buf)?,
                })
            })
            .collect()
    }

    /// Saves the parameters to a safetensors file, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let meta = HashMap::from([
            ("network".to_string(), self.plan.name.to_string()),
            ("format".to_string(), "pt".to_string()),
        ]);
        weights::write_safetensors(path, &self.tensors()?, Some(meta))
    }

    /// Fill activation buffers with NaN before every pass (see the field); for tests.
    pub fn set_poison(&mut self, poison: bool) {
        self.poison = poison;
    }

    /// The backend, the plan and the parameters (per layer of the plan: weight and bias
    /// for learned layers), borrowed apart so that training can update them in place.
    pub(crate) fn parts_mut(&mut self) -> (&B, &Plan, &mut [LayerParams<B>]) {
        (&self.backend, &self.plan, &mut self.params)
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Fails unless this model was built from `plan`.
    pub fn expect_plan(&self, plan: &Plan) -> Result<()> {
        if &self.plan != plan {
            return Err(Error::PlanMismatch {
                expected: plan.name.to_string(),
                found: self.plan.name.to_string(),
            });
        }
        Ok(())
    }

    /// Inference on a `[N, C, H, W]` batch (dropout is the identity); returns
    /// `[N, C', H', W']` of the last layer.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        self.run(input, None)
    }

    /// [`Model::forward`], calling `inspect(layer_name, values)` with every stage's output,
    /// named after the last layer of the stage (a fused ReLU's name, for instance).
    pub fn forward_inspect(
        &self,
        input: &Tensor,
        mut inspect: impl FnMut(&str, &[f32]),
    ) -> Result<Tensor> {
        self.run(input, Some(&mut inspect))
    }

    /// [`Model::forward`], timing every stage (the backend is synchronised around each):
    /// returns the output and `(stage label, seconds)` per stage, the label as
    /// [`Plan::stage_label`] gives it (`conv1+relu` for a convolution with its ReLU fused).
    pub fn forward_timed(&self, input: &Tensor) -> Result<(Tensor, Vec<(String, f64)>)> {
        let mut times = Vec::new();
        let y = self.run_with(input, None, Some(&mut times))?;
        Ok((y, times))
    }

    fn run(&self, input: &Tensor, inspect: Option<Inspect<'_>>) -> Result<Tensor> {
        self.run_with(input, inspect, None)
    }

    fn run_with(
        &self,
        input: &Tensor,
        inspect: Option<Inspect<'_>>,
        times: Option<&mut Vec<(String, f64)>>,
    ) -> Result<Tensor> {
        let plan = &self.plan;
        let s = plan.input;
        let batch = match *input.shape() {
            [n, c, h, w] if (c, h, w) == (s.c, s.h, s.w) => n,
            _ => {
                let n = input.shape().first().copied().unwrap_or(0);
                return Err(Error::Shape {
                    what: format!("input of `{}`", plan.name),
                    expected: vec![n, s.c, s.h, s.w],
                    found: input.shape().to_vec(),
                });
            }
        };
        let input_buf = self.backend.upload(input.data())?;
        self.run_from(batch, input_buf, inspect, times)
    }

    /// The stages of the forward pass on `batch` images already on the backend.
    fn run_from(
        &self,
        batch: usize,
        input_buf: F32<B>,
        inspect: Option<Inspect<'_>>,
        times: Option<&mut Vec<(String, f64)>>,
    ) -> Result<Tensor> {
        let plan = &self.plan;
        let [_, max, _] = crate::footprint::forward_buffers(plan, batch);
        let fresh = || {
            if self.poison {
                self.backend.upload(&vec![f32::NAN; max])
            } else {
                self.backend.alloc::<f32>(max)
            }
        };
        let kept = match self.spare.lock() {
            Ok(mut spare) if !self.poison => spare.take().filter(|(len, _)| *len == max),
            _ => None,
        };
        let mut bufs = match kept {
            Some((_, bufs)) => bufs,
            None => [fresh()?, fresh()?],
        };
        let last = self.launch_stages(batch, &input_buf, &mut bufs, inspect, times)?;
        let out_shape = plan.output();
        let last = last.map_or(&input_buf, |i| &bufs[i]);
        let data = self
            .backend
            .download_prefix(last, batch * out_shape.len())?;
        if self.backend.keeps_activations() {
            if let Ok(mut spare) = self.spare.lock() {
                *spare = Some((max, bufs));
            }
        }
        Tensor::new(vec![batch, out_shape.c, out_shape.h, out_shape.w], data)
    }

    /// Runs the inference stages ([`Plan::inference_stages`], dropout skipped) on `batch`
    /// images in `input`, stage i writing `bufs[i % 2]` (each of
    /// `footprint::forward_buffers`' length) and reading the other; returns which of
    /// `bufs` holds the output (`None`: no stage ran, the output is `input`). Only
    /// launches kernels (a CUDA graph records exactly this), unless `inspect` or `times`
    /// asks for more.
    pub(crate) fn launch_stages(
        &self,
        batch: usize,
        input: &F32<B>,
        bufs: &mut [F32<B>; 2],
        mut inspect: Option<Inspect<'_>>,
        mut times: Option<&mut Vec<(String, f64)>>,
    ) -> Result<Option<usize>> {
        let plan = &self.plan;
        let stages: Vec<_> = plan
            .inference_stages()
            .into_iter()
            .filter(|st| !plan.layers[st.layer].op.kind().identity_at_inference())
            .collect();
        for (i, stage) in stages.iter().enumerate() {
            let params: Vec<&F32<B>> = self.params[stage.layer].iter().map(|(_, b)| b).collect();
            let [b0, b1] = bufs;
            let (src, dst) = if i % 2 == 0 { (&*b1, b0) } else { (&*b0, b1) };
            let src = if i == 0 { input } else { src };
            let t0 = std::time::Instant::now();
            self.backend
                .forward_stage(plan, *stage, batch, src, &params, dst)?;
            if let Some(t) = times.as_mut() {
                self.backend.synchronize()?;
                t.push((plan.stage_label(*stage), t0.elapsed().as_secs_f64()));
            }
            if let Some(f) = inspect.as_mut() {
                let len = batch * plan.layers[stage.last()].output.len();
                let values = self.backend.download_prefix(dst, len)?;
                f(plan.stage_output_name(*stage), &values);
            }
        }
        Ok(stages.len().checked_sub(1).map(|n| n % 2))
    }
}

impl<B: Inference + Augment> Model<B> {
    /// Inference on patches the backend cuts from 8-bit images (HWC, `cut.side *
    /// cut.side * 3` bytes each, as a prepared set stores them), `per_image` draws for
    /// each ([`Augment::cut_batch`]; on a GPU the bytes cross, not the patches: for ten
    /// crops of 227x227 from 256x256, a thirtieth of their f32 bytes). Returns one output
    /// per draw, in order: [`Model::forward`] of [`Cut::batch`] of the same images, bit
    /// for bit.
    pub fn forward_images(
        &self,
        cut: &Cut<'_>,
        images: &[u8],
        draws: &[Draw],
        per_image: usize,
    ) -> Result<Tensor> {
        let batch = self.check_images(cut, images.len(), draws, per_image)?;
        let bytes = self.backend.upload(images)?;
        let mut input = self.backend.alloc::<f32>(batch * cut.patch_len())?;
        self.cut_into(cut, &bytes, draws, per_image, &mut input)?;
        self.run_from(batch, input, None, None)
    }

    /// Checks that `cut` makes this network's input and that `images_len` bytes of images
    /// and `draws` (at least one) agree, as [`Model::cut_into`] takes them; returns the
    /// number of patches.
    pub(crate) fn check_images(
        &self,
        cut: &Cut<'_>,
        images_len: usize,
        draws: &[Draw],
        per_image: usize,
    ) -> Result<usize> {
        let shape = cut.shape();
        let s = self.plan.input;
        if (s.c, s.h, s.w) != (3, shape.crop.0, shape.crop.1) {
            return Err(Error::Shape {
                what: format!("patches for `{}`", self.plan.name),
                expected: vec![s.c, s.h, s.w],
                found: vec![3, shape.crop.0, shape.crop.1],
            });
        }
        shape.check(
            images_len,
            draws,
            per_image,
            draws.len() * shape.patch_len(),
        )?;
        if draws.is_empty() {
            return Err(Error::Invalid("an empty batch of images".into()));
        }
        Ok(draws.len())
    }

    /// Cuts the patches of `draws` from `images` (on the backend) into `out` with
    /// [`Augment::cut_batch`], the cut's mean kept on the backend: uploaded again only
    /// when a cut with another mean comes (training and evaluation cuts share it).
    pub(crate) fn cut_into(
        &self,
        cut: &Cut<'_>,
        images: &B::Buffer<u8>,
        draws: &[Draw],
        per_image: usize,
        out: &mut F32<B>,
    ) -> Result<()> {
        let mut kept = self
            .mean
            .lock()
            .map_err(|_| Error::Internal("model: mean poisoned".into()))?;
        if !matches!(&*kept, Some((host, _)) if host.as_slice() == cut.mean) {
            *kept = None;
            *kept = Some((cut.mean.to_vec(), self.backend.upload(cut.mean)?));
        }
        let (_, mean) = kept
            .as_ref()
            .ok_or_else(|| Error::Internal("model: mean missing".into()))?;
        self.backend
            .cut_batch(cut.shape(), mean, images, draws, per_image, out)
    }
}
