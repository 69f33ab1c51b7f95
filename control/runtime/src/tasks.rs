//! Named long-lived tasks with one graceful-shutdown path.
//!
//! A component spawns its loops (accept loops, watchers, reconcilers) through [`Tasks::spawn`],
//! giving each a name. Each task runs inside a `tracing` span carrying that name, receives a
//! [`Shutdown`] it must watch, and its end (clean, failed, or panicked) is logged. On SIGTERM or
//! SIGINT the owner calls [`Tasks::shutdown`], which signals every task and waits, with a
//! deadline, for all of them to finish.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// A cheap-clone signal that tells tasks to stop.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A new signal, not yet triggered.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Asks every holder of this signal to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether stopping has been asked for.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once stopping has been asked for.
    pub async fn wait(&self) {
        self.token.cancelled().await
    }
}

/// The set of named tasks a process runs.
#[derive(Debug, Clone)]
pub struct Tasks {
    shutdown: Shutdown,
    tracker: TaskTracker,
    /// Counts tasks that ended before shutdown was asked for.
    ended_early: Arc<watch::Sender<u64>>,
}

impl Default for Tasks {
    fn default() -> Tasks {
        Tasks {
            shutdown: Shutdown::new(),
            tracker: TaskTracker::new(),
            ended_early: Arc::new(watch::Sender::new(0)),
        }
    }
}

/// How a call to [`Tasks::shutdown`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// Every task finished.
    Clean,
    /// The deadline passed with tasks still running.
    TimedOut,
}

impl Tasks {
    /// An empty set of tasks.
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// The signal shared by every task of this set.
    pub fn shutdown_signal(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Spawns `make(shutdown)` as a task named `name`. The task should return when the
    /// shutdown signal fires; an error it returns is logged with its name.
    pub fn spawn<F, Fut, E>(&self, name: &'static str, make: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let fut = make(self.shutdown.clone());
        let span = tracing::info_span!("task", name);
        let shutdown = self.shutdown.clone();
        let ended_early = self.ended_early.clone();
        self.tracker.spawn(
            async move {
                tracing::debug!("started");
                match fut.await {
                    Ok(()) => tracing::debug!("finished"),
                    Err(e) => tracing::error!(error = %e, "task failed"),
                }
                if !shutdown.is_triggered() {
                    ended_early.send_modify(|n| *n += 1);
                }
            }
            .instrument(span),
        );
    }

    /// Signals every task to stop and waits up to `deadline` for them to finish.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownOutcome {
        self.shutdown.trigger();
        self.tracker.close();
        match tokio::time::timeout(deadline, self.tracker.wait()).await {
            Ok(()) => ShutdownOutcome::Clean,
            Err(_) => {
                tracing::warn!(
                    remaining = self.tracker.len(),
                    "tasks still running after the shutdown deadline"
                );
                ShutdownOutcome::TimedOut
            }
        }
    }

    /// Completes when any task has ended on its own (without a shutdown signal): a component
    /// whose essential loop died should stop the process rather than limp along.
    pub async fn any_ended(&self) {
        let mut rx = self.ended_early.subscribe();
        let _ = rx.wait_for(|n| *n > 0).await;
    }
}

/// Completes on SIGTERM or SIGINT, returning the signal's name.
pub async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stopping only on Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn shutdown_stops_every_task_and_waits_for_it() {
        let tasks = Tasks::new();
        let stopped = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let stopped = stopped.clone();
            tasks.spawn("waiter", move |shutdown| async move {
                shutdown.wait().await;
                stopped.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(())
            });
        }
        let outcome = tasks.shutdown(Duration::from_secs(5)).await;
        assert_eq!(outcome, ShutdownOutcome::Clean);
        assert_eq!(stopped.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_task_ignoring_shutdown_is_reported_after_the_deadline() {
        let tasks = Tasks::new();
        tasks.spawn("stubborn", |_| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, String>(())
        });
        let outcome = tasks.shutdown(Duration::from_millis(50)).await;
        assert_eq!(outcome, ShutdownOutcome::TimedOut);
    }

    #[tokio::test]
    async fn any_ended_notices_a_task_that_died() {
        let tasks = Tasks::new();
        tasks.spawn("long", |s| async move {
            s.wait().await;
            Ok::<_, String>(())
        });
        tasks.spawn("dies", |_| async { Err::<(), _>("boom".to_string()) });
        tokio::time::timeout(Duration::from_secs(5), tasks.any_ended())
            .await
            .expect("the failed task was noticed");
        tasks.shutdown(Duration::from_secs(1)).await;
    }
}
