//! The towers' exchanges on GPUs: the generated gather, pack and reduce kernels, reading
//! the other tower's buffer in place on one GPU, or a peer copy of it on two.

use cudarc::driver::CudaSlice;

use super::binder::Binder;
use super::device::Cuda;
use super::launch::batch_i32;
use crate::backend::{check_exchange, Exchange, Memory};
use crate::error::Result;
use crate::ir::{Plan, Role};

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
        let mut local = self.alloc::<f32>(len)?;
        self.stream
            .memcpy_dtod(&buf.slice(..len), &mut local)
            .map_err(self.err("peer copy"))?;
        Ok(Some(local))
    }
}

impl Exchange for Cuda {
    /// Two `Cuda`s of one GPU share its context: kernels read each other's buffers in
    /// place. Between two GPUs the exchanges are peer copies (`cuMemcpyPeerAsync`); the
    /// driver copies directly where the two GPUs can reach each other and through the
    /// host where not. Peer access is not turned on: cudarc allocates from the devices'
    /// memory pools, which ignore a context's peer access (`cuMemPoolSetAccess` would be
    /// needed, and no machine with two GPUs has been lent to test it).
    fn connect(&self, other: &Cuda) -> Result<String> {
        if self.ctx.cu_ctx() == other.ctx.cu_ctx() {
            return Ok("one context with the other tower: direct reads".into());
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
        Ok(format!("peer copies from cuda:{} ({path})", other.ordinal))
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
        let b = batch_i32(plan, layer, batch)?;
        let loaded = self.loaded(plan)?;
        let binder = Binder::new()
            .read("own", own)
            .read("other", other)
            .write("whole", whole)
            .int("batch", b);
        self.launch(loaded.get(plan, layer, Role::Gather)?, batch, binder)
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
        let b = batch_i32(plan, layer, batch)?;
        let loaded = self.loaded(plan)?;
        let binder = Binder::new()
            .read("dx", dx)
            .write("packed", packed)
            .int("batch", b);
        self.launch(loaded.get(plan, layer, Role::Pack)?, batch, binder)
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
        let b = batch_i32(plan, layer, batch)?;
        let loaded = self.loaded(plan)?;
        let binder = Binder::new()
            .read("dx", dx)
            .read("received", received)
            .write("dy", dy)
            .int("batch", b);
        self.launch(loaded.get(plan, layer, Role::Reduce)?, batch, binder)
    }
}
