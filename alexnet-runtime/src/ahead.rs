//! Batches of bytes handed over ahead of the steps that use them
//! ([`crate::Trainer::send_images`]): a thread of their own copies each to the backend
//! ([`crate::backend::Upload`]) while the steps before it compute, and gives it back,
//! in the order sent, with the buffer it now lies in.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::backend::{Memory, Uploader};
use crate::error::{Error, Result};

/// The uploading thread of a trainer, and the device buffers it copies into.
pub(crate) struct Ahead<B: Memory> {
    jobs: Option<Sender<Job<B>>>,
    /// In a mutex only so that a trainer stays `Sync` (a receiver is not).
    done: Mutex<Receiver<Result<Uploaded<B>>>>,
    thread: Option<JoinHandle<()>>,
    /// Why the thread stopped, once it did: every later call says it again.
    failed: Option<String>,
    /// Buffers of batches stepped on, with their lengths, for the next copies (two kept:
    /// one being read by a step while the next batch is copied into the other).
    free: Vec<(B::Buffer<u8>, usize)>,
    /// Batches sent and not yet received.
    pending: usize,
}

/// A batch on the backend: `buf` holds exactly `len` bytes, copied from `host` (given
/// back for the caller to reuse).
pub(crate) struct Uploaded<B: Memory> {
    pub host: Vec<u8>,
    pub buf: B::Buffer<u8>,
    pub len: usize,
}

/// The bytes to copy, and a buffer to copy them into (used when its length fits).
type Job<B> = (Vec<u8>, Option<(<B as Memory>::Buffer<u8>, usize)>);

/// How many buffers of stepped batches are kept for reuse.
const KEPT: usize = 2;

impl<B: Memory> Ahead<B> {
    /// Starts the thread that copies with `up`.
    pub fn start<U: Uploader<B>>(mut up: U) -> Result<Self> {
        let (jobs, rx) = channel::<Job<B>>();
        let (tx, done) = channel();
        let thread = std::thread::Builder::new()
            .name("alexnet-upload".into())
            .spawn(move || {
                for (host, given) in rx {
                    if tx.send(upload(&mut up, host, given)).is_err() {
                        return; // the trainer is gone
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("no upload thread: {e}")))?;
        Ok(Ahead {
            jobs: Some(jobs),
            done: Mutex::new(done),
            thread: Some(thread),
            failed: None,
            free: Vec::new(),
            pending: 0,
        })
    }

    /// Hands `host` to the thread, which copies it into a free buffer of its length, or
    /// frees one of another length and makes a new one.
    pub fn send(&mut self, host: Vec<u8>) -> Result<()> {
        let fits = self.free.iter().position(|(_, len)| *len == host.len());
        let pick = fits.or((!self.free.is_empty()).then_some(0));
        let given = pick.map(|i| self.free.swap_remove(i));
        let sent = self.jobs.as_ref().map(|j| j.send((host, given)));
        match sent {
            Some(Ok(())) => {
                self.pending += 1;
                Ok(())
            }
            _ => Err(self.stopped()),
        }
    }

    /// The oldest batch sent, once its copy is queued on the backend (so that the
    /// backend's work queued afterwards sees its bytes), or the error of its copy; `None`
    /// when none is pending.
    pub fn receive(&mut self) -> Result<Option<Uploaded<B>>> {
        if self.failed.is_some() {
            return Err(self.stopped());
        }
        if self.pending == 0 {
            return Ok(None);
        }
        self.pending -= 1;
        let got = self
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        match got {
            Ok(r) => r.map(Some),
            Err(_) => Err(self.stopped()),
        }
    }

    /// A buffer of a batch stepped on, for a later copy.
    pub fn give_back(&mut self, buf: B::Buffer<u8>, len: usize) {
        if self.free.len() < KEPT {
            self.free.push((buf, len));
        }
    }

    /// Drops the batches sent and not received (the error of one of their copies, if
    /// any, after all are dropped).
    pub fn clear(&mut self) -> Result<()> {
        let mut first = None;
        while self.pending > 0 {
            match self.receive() {
                Ok(Some(u)) => self.give_back(u.buf, u.len),
                Ok(None) => break,
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The error for a thread that is gone (its panic's message when it panicked),
    /// the same every time.
    fn stopped(&mut self) -> Error {
        self.jobs = None;
        self.pending = 0;
        let why = self.failed.get_or_insert_with(|| {
            let why = match self.thread.take().map(JoinHandle::join) {
                Some(Err(p)) => p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into()),
                _ => "it stopped".into(),
            };
            format!("the upload thread failed: {why}")
        });
        Error::Internal(why.clone())
    }
}

impl<B: Memory> Drop for Ahead<B> {
    fn drop(&mut self) {
        self.jobs = None; // ends the thread's loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies `host` into `given` when it holds as many bytes, else into a new buffer.
fn upload<B: Memory, U: Uploader<B>>(
    up: &mut U,
    host: Vec<u8>,
    given: Option<(B::Buffer<u8>, usize)>,
) -> Result<Uploaded<B>> {
    let mut buf = match given {
        Some((b, len)) if len == host.len() => b,
        other => {
            drop(other); // freed before another is made
            up.alloc(host.len())?
        }
    };
    up.upload(&host, &mut buf)?;
    Ok(Uploaded {
        len: host.len(),
        host,
        buf,
    })
}
