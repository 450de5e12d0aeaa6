//! The forward pass recorded once as a CUDA graph and replayed: one launch from the host
//! per batch instead of one per kernel, so that a small batch is not paced by the host
//! (issue 17's "no host in the loop"). The replay runs the kernels of
//! [`Model::forward`] on the same buffers, so it computes the same bits.

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice};

use super::device::Cuda;
use crate::backend::Memory;
use crate::error::{Error, Result};
use crate::footprint::forward_buffers;
use crate::model::Model;
use crate::tensor::Tensor;

/// A [`Model`]'s forward pass on one batch size, recorded by [`Model::capture`]: its own
/// input, activation and split-K workspace buffers, and the graph of every kernel launch
/// between them. The model's weights are read where they are, so a training step (which
/// updates them in place) is seen by the next replay; the borrow keeps the model, and
/// so its weights' buffers, alive and in place.
pub struct ForwardGraph<'m> {
    model: &'m Model<Cuda>,
    graph: CudaGraph,
    batch: usize,
    input: CudaSlice<f32>,
    bufs: [CudaSlice<f32>; 2],
    /// Which of `bufs` holds the output (`None`: no stage runs, the output is the input).
    output: Option<usize>,
    /// The split-K sums' scratch the recorded kernels write, taken from the backend so
    /// that no later call frees or moves it.
    _workspace: Option<CudaSlice<f32>>,
}

impl std::fmt::Debug for ForwardGraph<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardGraph")
            .field("network", &self.model.plan().name)
            .field("batch", &self.batch)
            .finish()
    }
}

impl Model<Cuda> {
    /// Records the forward pass on `batch` images as a CUDA graph, to be replayed by
    /// [`ForwardGraph::forward`]. Runs one ordinary forward pass first (on zeros): it
    /// loads the kernels and sizes the split-K workspace, neither of which may happen
    /// while the stream records. No other work may run on this GPU's context while the
    /// capture runs (cudarc's cross-stream tracking is off meanwhile; see below).
    pub fn capture(&self, batch: usize) -> Result<ForwardGraph<'_>> {
        let (plan, gpu) = (self.plan(), self.backend());
        if batch == 0 {
            return Err(Error::Invalid(
                "cuda: a graph of a forward pass needs at least one image".into(),
            ));
        }
        let s = plan.input;
        self.forward(&Tensor::zeros(vec![batch, s.c, s.h, s.w]))?;
        let input = gpu.alloc::<f32>(batch * s.len())?;
        let [_, max, _] = forward_buffers(plan, batch);
        let mut bufs = [gpu.alloc::<f32>(max)?, gpu.alloc::<f32>(max)?];
        gpu.ctx
            .synchronize()
            .map_err(gpu.err("synchronising before a graph capture"))?;
        let tracking = gpu.ctx.is_event_tracking();
        // SAFETY: with tracking on, cudarc makes each launch wait on the events of its
        // buffers' last writes and record its reads; inside a capture a wait on an event
        // recorded before it is an error. The context was just synchronised, so no
        // earlier work is pending on any stream, and every launch recorded runs on this
        // backend's one stream, in order, as each replay does. Tracking is restored below
        // on every path.
        unsafe { gpu.ctx.disable_event_tracking() };
        let recorded = record(gpu, || {
            self.launch_stages(batch, &input, &mut bufs, None, None)
        });
        if tracking {
            // SAFETY: restores the setting found above.
            unsafe { gpu.ctx.enable_event_tracking() };
        }
        let (output, graph) = recorded?;
        graph
            .upload()
            .map_err(gpu.err("uploading a graph of the forward pass"))?;
        let workspace = gpu
            .workspace
            .lock()
            .map_err(|_| Error::Internal("cuda: workspace poisoned".into()))?
            .take();
        Ok(ForwardGraph {
            model: self,
            graph,
            batch,
            input,
            bufs,
            output,
            _workspace: workspace,
        })
    }
}

/// Runs `launch` while `gpu`'s stream records (this thread's launches only), and always
/// ends the capture, so that a failed launch leaves the stream usable.
fn record<T>(gpu: &Cuda, launch: impl FnOnce() -> Result<T>) -> Result<(T, CudaGraph)> {
    gpu.stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(gpu.err("beginning a graph capture"))?;
    let launched = launch();
    let graph = gpu
        .stream
        .end_capture(CUgraphInstantiate_flags(0))
        .map_err(gpu.err("ending a graph capture"));
    let launched = launched?;
    let graph = graph?.ok_or_else(|| {
        Error::Internal("cuda: the capture of the forward pass recorded nothing".into())
    })?;
    Ok((launched, graph))
}

impl ForwardGraph<'_> {
    /// The batch size it was recorded for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// [`Model::forward`] by replaying the recorded graph: `input` must be a batch of the
    /// recorded size (`[batch, C, H, W]`); it is copied into the graph's input buffer,
    /// the graph runs, and the output is copied back.
    pub fn forward(&mut self, input: &Tensor) -> Result<Tensor> {
        let (plan, gpu) = (self.model.plan(), self.model.backend());
        let s = plan.input;
        let want = [self.batch, s.c, s.h, s.w];
        if input.shape() != want {
            return Err(Error::Shape {
                what: format!("input of the graph of `{}`", plan.name),
                expected: want.to_vec(),
                found: input.shape().to_vec(),
            });
        }
        gpu.write(&mut self.input, input.data())?;
        self.graph
            .launch()
            .map_err(gpu.err("launching the graph of the forward pass"))?;
        let out = plan.output();
        let last = self.output.map_or(&self.input, |i| &self.bufs[i]);
        let data = gpu.download_prefix(last, self.batch * out.len())?;
        Tensor::new(vec![self.batch, out.c, out.h, out.w], data)
    }
}
