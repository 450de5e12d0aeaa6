//! The forward pass recorded once as a CUDA graph and replayed: one launch from the host
//! per batch instead of one per kernel, so that a small batch is not paced by the host
//! (issue 17's "no host in the loop"). The replay runs the kernels of
//! [`Model::forward`] (on buffers of its own, the same ones every replay), so it
//! computes the same bits.

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
/// between them. The model's weights are read where they are; the borrow keeps the
/// model, and so its weights' buffers, alive, in place and unchanged while the graph
/// lives.
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
    /// while the stream records. Takes the model exclusively, so that nothing else
    /// launches on its stream while it records; the graph then lends it back
    /// ([`ForwardGraph::model`]). While it records, cudarc's event tracking is off for
    /// the whole context, so no other thread may use this GPU's context meanwhile (a
    /// tower's backend on the same GPU included): buffers made then would carry no
    /// events.
    pub fn capture(&mut self, batch: usize) -> Result<ForwardGraph<'_>> {
        let model: &Model<Cuda> = self;
        let (plan, gpu) = (model.plan(), model.backend());
        if batch == 0 {
            return Err(Error::Invalid(
                "cuda: a graph of a forward pass needs at least one image".into(),
            ));
        }
        let s = plan.input;
        model.forward(&Tensor::zeros(vec![batch, s.c, s.h, s.w]))?;
        let input = gpu.alloc::<f32>(batch * s.len())?;
        let [_, max, _] = forward_buffers(plan, batch);
        let mut bufs = [gpu.alloc::<f32>(max)?, gpu.alloc::<f32>(max)?];
        let (output, graph) =
            gpu.record(|| model.launch_stages(batch, &input, &mut bufs, None, None))?;
        graph
            .upload()
            .map_err(gpu.err("uploading a graph of the forward pass"))?;
        let workspace = gpu
            .workspace
            .lock()
            .map_err(|_| Error::Internal("cuda: workspace poisoned".into()))?
            .take();
        Ok(ForwardGraph {
            model,
            graph,
            batch,
            input,
            bufs,
            output,
            _workspace: workspace,
        })
    }
}

impl Cuda {
    /// Runs `launch` while this GPU's stream records its launches into a graph (launches
    /// of this thread only), and returns what it returned with the graph, ready to
    /// launch. The context is synchronised first. While it records, cudarc's event
    /// tracking is off for the whole context (a wait on an event recorded before a
    /// capture is an error inside one), so no other thread may use this GPU's context
    /// meanwhile: buffers made then would carry no events. Tracking is restored and the
    /// capture ended on every path, a panic in `launch` included.
    pub(super) fn record<T>(&self, launch: impl FnOnce() -> Result<T>) -> Result<(T, CudaGraph)> {
        self.ctx
            .synchronize()
            .map_err(self.err("synchronising before a graph capture"))?;
        let mut guard = Recording {
            gpu: self,
            tracking: self.ctx.is_event_tracking(),
            capturing: false,
        };
        // SAFETY: with tracking on, cudarc makes each launch wait on the events of its
        // buffers' last writes and record its reads. The context was just synchronised,
        // so no earlier work is pending on any stream, and every launch recorded runs on
        // this backend's one stream, in order, as each replay does. `guard` restores the
        // setting on every path.
        unsafe { self.ctx.disable_event_tracking() };
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(self.err("beginning a graph capture"))?;
        guard.capturing = true;
        let launched = launch();
        guard.capturing = false;
        let graph = self
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(self.err("ending a graph capture"));
        drop(guard);
        let launched = launched?;
        let graph =
            graph?.ok_or_else(|| Error::Internal("cuda: the capture recorded nothing".into()))?;
        Ok((launched, graph))
    }
}

/// Ends a capture left open (a panic while recording) and restores cudarc's event
/// tracking, when dropped.
struct Recording<'a> {
    gpu: &'a Cuda,
    tracking: bool,
    capturing: bool,
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if self.capturing {
            // The graph of an interrupted capture is dropped unlaunched.
            let _ = self.gpu.stream.end_capture(CUgraphInstantiate_flags(0));
        }
        if self.tracking {
            // SAFETY: restores the setting `Cuda::record` found.
            unsafe { self.gpu.ctx.enable_event_tracking() };
        }
    }
}

impl<'m> ForwardGraph<'m> {
    /// The model it replays, for everything else (its ordinary forward pass included).
    pub fn model(&self) -> &'m Model<Cuda> {
        self.model
    }

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
