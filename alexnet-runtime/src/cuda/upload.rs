//! Uploads ahead on a GPU: the bytes staged in pinned (page-locked) host memory, then
//! copied on a stream of their own, so that the copy runs beside the compute stream's
//! kernels. Two staging buffers are used in turn: staging batch n + 1 waits only for the
//! copy of batch n - 1. The compute stream waits for a copy where a kernel reads its
//! buffer (cudarc records each buffer's last write and read as events: the context runs
//! more than one stream, so it tracks them), and a copy waits for the kernels queued
//! before it that read its buffer.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, PinnedHostSlice};

use super::device::Cuda;
use super::launch::driver_err;
use crate::backend::{Upload, Uploader};
use crate::error::{Error, Result};

/// The GPU's [`Uploader`]: a copy stream and two pinned staging buffers.
#[derive(Debug)]
pub struct CudaUploader {
    label: String,
    stream: Arc<CudaStream>,
    staging: [Option<PinnedHostSlice<u8>>; 2],
    next: usize,
}

impl Upload for Cuda {
    type Uploader = CudaUploader;

    fn uploader(&self) -> Result<CudaUploader> {
        // A stream that starts after the work queued so far on the compute stream.
        let stream = self.stream.fork().map_err(self.err("a copy stream"))?;
        Ok(CudaUploader {
            label: self.label(),
            stream,
            staging: [None, None],
            next: 0,
        })
    }
}

impl Uploader<Cuda> for CudaUploader {
    fn alloc(&mut self, len: usize) -> Result<CudaSlice<u8>> {
        self.stream
            .alloc_zeros::<u8>(len.max(1))
            .map_err(driver_err(&self.label, format!("allocating {len} bytes")))
    }

    fn upload(&mut self, data: &[u8], buf: &mut CudaSlice<u8>) -> Result<()> {
        if buf.len() < data.len() {
            return Err(Error::BufferTooSmall {
                what: format!("{}: destination of an upload", self.label),
                len: buf.len(),
                needed: data.len(),
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        let err = |what: &str| driver_err(&self.label, format!("upload: {what}"));
        let slot = &mut self.staging[self.next];
        self.next = (self.next + 1) % 2;
        if slot.as_ref().is_none_or(|p| p.len() != data.len()) {
            *slot = None; // freed once its last copy is done
                          // SAFETY: page-locked host memory of `data.len()` bytes, which cudarc frees
                          // when the slice drops (after its last copy); its bytes are written in full
                          // below before any copy reads them.
            let pinned = unsafe { self.stream.context().alloc_pinned::<u8>(data.len()) }
                .map_err(err("pinned memory"))?;
            *slot = Some(pinned);
        }
        let pinned = slot
            .as_mut()
            .ok_or_else(|| Error::Internal("upload: staging buffer missing".into()))?;
        // Waits for this buffer's previous copy (two batches ago) before overwriting it.
        pinned
            .as_mut_slice()
            .map_err(err("staging"))?
            .copy_from_slice(data);
        let mut dst = buf.slice_mut(..data.len());
        self.stream
            .memcpy_htod(pinned, &mut dst)
            .map_err(err("copy"))
    }
}
