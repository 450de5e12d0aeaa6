//! Uploads ahead on the CPU: a plain copy into the buffer, made by the uploading thread
//! (the buffers are host memory already).

use super::Cpu;
use crate::backend::{Upload, Uploader};
use crate::error::{Error, Result};

/// The CPU's [`Uploader`]: copies.
#[derive(Debug, Default)]
pub struct CpuUploader;

impl Upload for Cpu {
    type Uploader = CpuUploader;

    fn uploader(&self) -> Result<CpuUploader> {
        Ok(CpuUploader)
    }
}

impl Uploader<Cpu> for CpuUploader {
    fn alloc(&mut self, len: usize) -> Result<Vec<u8>> {
        Ok(vec![0; len])
    }

    fn upload(&mut self, data: &[u8], buf: &mut Vec<u8>) -> Result<()> {
        let len = buf.len();
        let dst = buf.get_mut(..data.len()).ok_or(Error::BufferTooSmall {
            what: "cpu: destination of an upload".into(),
            len,
            needed: data.len(),
        })?;
        dst.copy_from_slice(data);
        Ok(())
    }
}
