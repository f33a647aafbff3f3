//! The notifier thread: after each commit, the writer hands the batch's
//! changes and its callers' answers here, and goes on with the next batch
//! while this thread feeds the observer (the segment index) and then
//! answers the callers. Commit order is kept, and a caller is answered only
//! once its changes reached the observer, so whatever a caller was told is
//! stored is already visible to segments.
//!
//! Before, the writer did both itself: a CSV import spent a sixth of the
//! writer's time updating the segment index, time in which nothing was
//! written.

use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, OnceLock};

use super::{Change, Completion, Observer};

/// Batches handed over and not yet fed to the observer before the writer
/// waits (each holds its changes in memory).
const DEPTH: usize = 4;

/// What the writer hands over, in commit order.
enum Notice {
    /// A committed batch: its changes, then its callers' answers.
    Committed {
        changes: Vec<Change>,
        completions: Vec<Completion>,
    },
    /// Answered once everything handed over before it is done.
    Barrier(SyncSender<()>),
    /// The writer stopped: nothing follows.
    Stop,
}

/// The writer's end: hands committed batches over.
#[derive(Clone)]
pub(super) struct Notifier {
    tx: SyncSender<Notice>,
    observer: Arc<OnceLock<Observer>>,
}

impl Notifier {
    /// Starts the thread.
    pub(super) fn start(
        observer: Arc<OnceLock<Observer>>,
    ) -> std::io::Result<(Notifier, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(DEPTH);
        let o = observer.clone();
        let thread = std::thread::Builder::new()
            .name("herald-store-notify".into())
            .spawn(move || run(rx, &o))?;
        Ok((Notifier { tx, observer }, thread))
    }

    /// Hands a committed batch over (done here, at once, if the thread is
    /// gone).
    pub(super) fn committed(&self, changes: Vec<Change>, completions: Vec<Completion>) {
        let notice = Notice::Committed {
            changes,
            completions,
        };
        if let Err(std::sync::mpsc::SendError(n)) = self.tx.send(notice) {
            handle(n, &self.observer);
        }
    }

    /// Returns once every batch handed over before has reached the
    /// observer and its callers were answered.
    pub(super) fn barrier(&self) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Notice::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Tells the thread to finish what it holds and stop.
    pub(super) fn stop(&self) {
        let _ = self.tx.send(Notice::Stop);
    }
}

fn run(rx: Receiver<Notice>, observer: &OnceLock<Observer>) {
    for n in rx {
        if matches!(n, Notice::Stop) {
            break;
        }
        handle(n, observer);
    }
}

fn handle(n: Notice, observer: &OnceLock<Observer>) {
    match n {
        Notice::Committed {
            changes,
            completions,
        } => {
            if let Some(o) = observer.get()
                && !changes.is_empty()
            {
                o(changes);
            }
            for c in completions {
                c(Ok(()));
            }
        }
        Notice::Barrier(done) => {
            let _ = done.send(());
        }
        Notice::Stop => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Batches reach the observer in the order they were handed over, each
    /// before its callers are answered, and a barrier returns only after
    /// everything before it.
    #[test]
    fn order_is_kept_and_callers_follow_the_observer() -> std::io::Result<()> {
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let observer = Arc::new(OnceLock::new());
        let l = log.clone();
        let o: Observer = Arc::new(move |c: Vec<Change>| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            if let Ok(mut l) = l.lock() {
                l.push(format!("observed {}", c.len()));
            }
        });
        assert!(observer.set(o).is_ok());
        let (n, thread) = Notifier::start(observer)?;
        for i in 1..=3usize {
            let l = log.clone();
            let answer: Completion = Box::new(move |r| {
                if let Ok(mut l) = l.lock() {
                    l.push(format!("answered {i} {}", r.is_ok()));
                }
            });
            let changes = (0..i).map(|_| Change::ContactDeleted(i as u64)).collect();
            n.committed(changes, vec![answer]);
        }
        n.barrier();
        let seen = log.lock().map(|l| l.clone()).unwrap_or_default();
        assert_eq!(
            seen,
            [
                "observed 1",
                "answered 1 true",
                "observed 2",
                "answered 2 true",
                "observed 3",
                "answered 3 true"
            ]
        );
        n.stop();
        assert!(thread.join().is_ok());
        Ok(())
    }
}
