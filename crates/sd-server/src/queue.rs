//! The bounded job queue between the HTTP handlers and the worker thread.
//! Jobs run in order; the worker may take several queued txt2img jobs that
//! agree in shape as one UNet batch ([`Queue::take`]).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::job::{CancelFlag, Job};

/// What the worker does next.
pub enum Work {
    /// One job, or several that share a UNet batch (all with the same
    /// [`Job::batch_key`]).
    Generate(Vec<Job>),
    /// Switch the served model (`POST /sdapi/v1/options`), in queue order.
    LoadModel {
        name: String,
        path: PathBuf,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
}

enum Entry {
    Job(Job),
    Load {
        name: String,
        path: PathBuf,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Entry>,
    running: Vec<(i64, CancelFlag)>,
    closed: bool,
}

/// Jobs waiting and running, at most `capacity` of them.
pub struct Queue {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
}

/// What cancelling a job found.
pub enum Cancelled {
    /// It was waiting: here it is, out of the queue, for the caller to answer.
    Queued(Box<Job>),
    /// It is running: it stops at its next step.
    Running,
    NotFound,
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Queue {
            state: Mutex::default(),
            ready: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Jobs waiting plus running.
    pub fn depth(&self) -> usize {
        let state = self.lock();
        state.waiting.len() + state.running.len()
    }

    /// Jobs waiting, not yet started.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Queues `job`, or gives it back when the queue is full.
    pub fn push(&self, job: Job) -> Result<(), Job> {
        let mut state = self.lock();
        if state.closed || state.waiting.len() + state.running.len() >= self.capacity {
            return Err(job);
        }
        state.waiting.push_back(Entry::Job(job));
        self.ready.notify_one();
        Ok(())
    }

    /// Queues a model switch (not counted against the capacity).
    pub fn push_load(
        &self,
        name: String,
        path: PathBuf,
        reply: oneshot::Sender<Result<(), ApiError>>,
    ) {
        let mut state = self.lock();
        state.waiting.push_back(Entry::Load { name, path, reply });
        self.ready.notify_one();
    }

    /// The next work, waiting for it; `None` once closed. Queued txt2img
    /// jobs with the first one's batch key join it up to `max_images`
    /// images, in queue order; cancelled jobs come out as they are (the
    /// worker answers them without running).
    pub fn take(&self, max_images: usize) -> Option<Work> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if !state.waiting.is_empty() {
                break;
            }
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        let first = state.waiting.pop_front()?;
        let first = match first {
            Entry::Load { name, path, reply } => {
                return Some(Work::LoadModel { name, path, reply })
            }
            Entry::Job(job) => job,
        };
        let mut images = first.images();
        let key = first.batch_key();
        let mut batch = vec![first];
        if let Some(key) = key {
            let mut i = 0;
            while i < state.waiting.len() {
                let joins = match &state.waiting[i] {
                    Entry::Job(job) => {
                        !job.cancel.is_cancelled()
                            && job.batch_key().as_ref() == Some(&key)
                            && images + job.images() <= max_images
                    }
                    // Nothing moves past a model switch.
                    Entry::Load { .. } => break,
                };
                if joins {
                    if let Some(Entry::Job(job)) = state.waiting.remove(i) {
                        images += job.images();
                        batch.push(job);
                    }
                } else {
                    i += 1;
                }
            }
        }
        for job in &batch {
            state.running.push((job.id, job.cancel.clone()));
        }
        Some(Work::Generate(batch))
    }

    /// These jobs are done (a no-op for jobs that never ran).
    pub fn finished(&self, ids: &[i64]) {
        self.lock().running.retain(|(id, _)| !ids.contains(id));
    }

    /// Cancels job `id`, queued or running.
    pub fn cancel(&self, id: i64) -> Cancelled {
        let mut state = self.lock();
        if let Some((_, flag)) = state.running.iter().find(|(j, _)| *j == id) {
            flag.cancel();
            return Cancelled::Running;
        }
        let position = state
            .waiting
            .iter()
            .position(|entry| matches!(entry, Entry::Job(job) if job.id == id));
        match position.and_then(|i| state.waiting.remove(i)) {
            Some(Entry::Job(job)) => {
                job.cancel.cancel();
                Cancelled::Queued(Box::new(job))
            }
            _ => Cancelled::NotFound,
        }
    }

    /// Cancels the running jobs (A1111's interrupt); returns their ids.
    pub fn interrupt(&self) -> Vec<i64> {
        let state = self.lock();
        for (_, flag) in &state.running {
            flag.cancel();
        }
        state.running.iter().map(|(id, _)| *id).collect()
    }

    /// Stops the worker after its current work. Waiting requests are
    /// answered at once (503: their reply channels close); their jobs stay
    /// queued in the database and are marked failed at the next start.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.waiting.clear();
        self.ready.notify_all();
    }
}
