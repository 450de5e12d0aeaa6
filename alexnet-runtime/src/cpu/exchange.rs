//! The towers' exchanges on the CPU: copies between the two towers' buffers (two CPU
//! workers share the machine's memory).

use rayon::prelude::*;

use super::Cpu;
use crate::backend::{check_exchange, Exchange};
use crate::error::Result;
use crate::ir::Plan;

impl Exchange for Cpu {
    fn gather(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        own: &Vec<f32>,
        other: &Vec<f32>,
        whole: &mut Vec<f32>,
    ) -> Result<()> {
        let bufs = [
            ("own", own.len(), false),
            ("other", other.len(), false),
            ("whole", whole.len(), true),
        ];
        let (t, p) = check_exchange("cpu", plan, layer, batch, &bufs)?;
        whole[..batch * 2 * p]
            .par_chunks_mut(2 * p)
            .zip(own.par_chunks(p).zip(other.par_chunks(p)))
            .for_each(|(w, (a, b))| {
                w[t * p..(t + 1) * p].copy_from_slice(a);
                w[(1 - t) * p..(2 - t) * p].copy_from_slice(b);
            });
        Ok(())
    }

    fn pack_gradient(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        dx: &Vec<f32>,
        packed: &mut Vec<f32>,
    ) -> Result<()> {
        let bufs = [("dx", dx.len(), true), ("packed", packed.len(), false)];
        let (t, p) = check_exchange("cpu", plan, layer, batch, &bufs)?;
        let other = 1 - t;
        packed[..batch * p]
            .par_chunks_mut(p)
            .zip(dx.par_chunks(2 * p))
            .for_each(|(out, d)| out.copy_from_slice(&d[other * p..(other + 1) * p]));
        Ok(())
    }

    fn reduce_gradient(
        &self,
        plan: &Plan,
        layer: usize,
        batch: usize,
        dx: &Vec<f32>,
        received: &Vec<f32>,
        dy: &mut Vec<f32>,
    ) -> Result<()> {
        let bufs = [
            ("dx", dx.len(), true),
            ("received", received.len(), false),
            ("dy", dy.len(), false),
        ];
        let (t, p) = check_exchange("cpu", plan, layer, batch, &bufs)?;
        dy[..batch * p]
            .par_chunks_mut(p)
            .zip(dx.par_chunks(2 * p).zip(received.par_chunks(p)))
            .for_each(|(out, (d, r))| {
                for ((o, a), b) in out.iter_mut().zip(&d[t * p..(t + 1) * p]).zip(r) {
                    *o = a + b;
                }
            });
        Ok(())
    }
}
