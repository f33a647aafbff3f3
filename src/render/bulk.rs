//! The bulk renderer: a stream of recipients in, batches of built messages
//! out, rendered on a rayon pool.
//!
//! Memory stays flat however large the audience: the input is pulled one
//! batch at a time, and at most three batches exist at once — one being
//! rendered, one waiting in a channel of capacity one, one in the caller's
//! hands. When the caller is slow (the queue is full, delivery lags), the
//! renderer waits on the channel: that is the back-pressure. A recipient whose
//! render fails is reported in its batch and counted; it never stops the run.

use std::ops::ControlFlow;
use std::sync::Arc;

use rayon::prelude::*;

use super::compile::{Compiled, Recipient, Rendered};

/// The outcome for one recipient.
#[derive(Debug)]
pub enum Outcome {
    /// Rendered and built.
    Built {
        /// What was rendered (subject, message id, …; bodies emptied to save
        /// memory — the built message has them).
        rendered: Box<Rendered>,
        /// The MIME message, not yet signed.
        message: Vec<u8>,
    },
    /// Could not be rendered.
    Failed {
        /// The contact.
        contact: u64,
        /// The address.
        email: String,
        /// Why.
        error: String,
    },
}

/// Totals of a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Messages built.
    pub built: u64,
    /// Recipients that failed to render.
    pub failed: u64,
    /// Batches handed to the caller.
    pub batches: u64,
}

/// Builds a rendering pool of `threads` threads.
pub fn pool(threads: usize) -> Result<Arc<rayon::ThreadPool>, String> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("herald-render-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| format!("cannot start the rendering pool: {e}"))
}

/// Renders one recipient and builds its message.
pub fn render_one(compiled: &Compiled, r: &Recipient, now_ms: i64) -> Outcome {
    let built = compiled
        .render(r)
        .and_then(|rendered| compiled.build(&rendered, now_ms).map(|m| (rendered, m)));
    match built {
        Ok((mut rendered, message)) => {
            rendered.html = String::new();
            rendered.text = String::new();
            Outcome::Built {
                rendered: Box::new(rendered),
                message,
            }
        }
        Err(e) => Outcome::Failed {
            contact: r.contact.id,
            email: r.contact.email.clone(),
            error: e.0,
        },
    }
}

/// Renders every recipient of `input` in batches of `batch_size` on `pool`,
/// calling `sink` with each batch in input order. `sink` returning
/// `ControlFlow::Break` stops the run after that batch (pause, cancel).
/// `now_ms` gives the Date header of each message.
pub fn run<I, F>(
    compiled: &Compiled,
    pool: &rayon::ThreadPool,
    batch_size: usize,
    input: I,
    now_ms: impl Fn() -> i64 + Sync,
    mut sink: F,
) -> Totals
where
    I: Iterator<Item = Recipient> + Send,
    F: FnMut(Vec<Outcome>) -> ControlFlow<()>,
{
    let batch_size = batch_size.max(1);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Outcome>>(1);
    let mut totals = Totals::default();
    std::thread::scope(|scope| {
        let now_ms = &now_ms;
        scope.spawn(move || {
            let mut input = input;
            loop {
                let batch: Vec<Recipient> = input.by_ref().take(batch_size).collect();
                if batch.is_empty() {
                    return;
                }
                let now = now_ms();
                let out: Vec<Outcome> = pool.install(|| {
                    batch
                        .par_iter()
                        .map(|r| render_one(compiled, r, now))
                        .collect()
                });
                if tx.send(out).is_err() {
                    return; // the caller stopped
                }
            }
        });
        for batch in rx.iter() {
            for o in &batch {
                match o {
                    Outcome::Built { .. } => totals.built += 1,
                    Outcome::Failed { .. } => totals.failed += 1,
                }
            }
            totals.batches += 1;
            if sink(batch).is_break() {
                break;
            }
        }
        // Dropping the receiver ends the producer at its next send.
        drop(rx);
    });
    totals
}
