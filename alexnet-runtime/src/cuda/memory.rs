//! GPU memory: buffers of any [`Element`] on this backend's stream.

use cudarc::driver::CudaSlice;

use super::device::Cuda;
use crate::backend::{Element, Memory};
use crate::error::{Error, Result};

impl Memory for Cuda {
    type Buffer<T: Element> = CudaSlice<T>;

    fn name(&self) -> String {
        format!(
            "cuda:{} ({}, {}, {})",
            self.ordinal, self.device_name, self.arch, self.precision
        )
    }

    fn memory_info(&self) -> Result<Option<(u64, u64)>> {
        let (free, total) = self
            .ctx
            .mem_get_info()
            .map_err(self.err("querying the free memory"))?;
        Ok(Some((free as u64, total as u64)))
    }

    fn alloc<T: Element>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(self.err(format!("allocating {len} {} values", T::ELEM.name())))
    }

    fn upload<T: Element>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(data)
            .map_err(self.err(format!("uploading {} values", data.len())))
    }

    fn download<T: Element>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(buf).map_err(self.err("download"))
    }

    fn download_prefix<T: Element>(&self, buf: &CudaSlice<T>, len: usize) -> Result<Vec<T>> {
        let view = buf.slice(..len.min(buf.len()));
        self.stream.clone_dtoh(&view).map_err(self.err("download"))
    }

    fn write<T: Element>(&self, buf: &mut CudaSlice<T>, data: &[T]) -> Result<()> {
        if buf.len() < data.len() {
            return Err(Error::BufferTooSmall {
                what: format!("{}: destination of a write", self.label()),
                len: buf.len(),
                needed: data.len(),
            });
        }
        let mut view = buf.slice_mut(..data.len());
        self.stream
            .memcpy_htod(data, &mut view)
            .map_err(self.err("upload"))
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(self.err("synchronize"))
    }
}
