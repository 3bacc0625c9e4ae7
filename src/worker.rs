//! Supervised background work: [`Workers`] runs named tasks beside the HTTP
//! server, restarts one that fails or panics (with back-off), reports failing
//! ones to `/readyz`, and stops them in reverse start order on shutdown.
//!
//! A task is a function from a [`WorkerContext`] to a future. It runs until
//! it returns, and should return `Ok(())` soon after
//! [`WorkerContext::stopping`] completes (a task that does not is dropped
//! once the shutdown budget is spent). `Err` and panics are logged with the
//! worker's name and the task is started again after a back-off; `Ok` before
//! shutdown means the work is done: it is not restarted.
//!
//! This module imports nothing else of the crate.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What a task's run ends with: `Err` is logged and the task restarted.
pub type WorkerResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// How long a task waits before it is started again after a failure.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The wait after the first failure; doubled after each further one.
    pub initial: Duration,
    /// The longest wait.
    pub max: Duration,
    /// A run that lasts this long counts as healthy: the wait starts again
    /// from `initial` and the worker stops counting as failing.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// The shared health of every worker, read by `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct WorkerHealth {
    workers: Arc<Mutex<Vec<Arc<Status>>>>,
}

impl WorkerHealth {
    /// The first worker that is failing or degraded, as
    /// `worker NAME: REASON`; `None` when all are well.
    #[must_use]
    pub fn failing(&self) -> Option<String> {
        let workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        workers.iter().find_map(|status| {
            status
                .problem()
                .map(|reason| format!("worker {}: {reason}", status.name))
        })
    }
}

/// One worker's health: set by the supervisor (a run failed) or by the task.
#[derive(Debug)]
struct Status {
    name: &'static str,
    /// Set when a run fails, cleared once a later run lasted `reset_after`.
    failure: Mutex<Option<String>>,
    /// Set and cleared by the task itself.
    degraded: Mutex<Option<String>>,
}

impl Status {
    fn problem(&self) -> Option<String> {
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        failure.or_else(|| {
            self.degraded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    fn set_failure(&self, failure: Option<String>) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = failure;
    }
}

/// What a running task gets: the stop signal and a way to report its health.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    stop: watch::Receiver<bool>,
    status: Arc<Status>,
}

impl WorkerContext {
    /// The worker's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.status.name
    }

    /// Completes once the worker is told to stop.
    pub async fn stopping(&self) {
        let mut stop = self.stop.clone();
        // An error means the sender is gone: stop as well.
        let _ = stop.wait_for(|stop| *stop).await;
    }

    /// Whether the worker has been told to stop.
    #[must_use]
    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Marks the worker degraded (`/readyz` answers 503 naming it) until
    /// [`Self::set_healthy`].
    pub fn set_degraded(&self, reason: impl Into<String>) {
        *self
            .status
            .degraded
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason.into());
    }

    /// Clears [`Self::set_degraded`], and the failure of an earlier run
    /// (which otherwise lasts until this run has lasted
    /// [`Backoff::reset_after`]).
    pub fn set_healthy(&self) {
        self.status.set_failure(None);
        *self
            .status
            .degraded
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// One started worker.
struct Worker {
    name: &'static str,
    stop: watch::Sender<bool>,
    supervisor: JoinHandle<()>,
}

/// The background tasks of one `Application`, in start order.
#[derive(Default)]
pub struct Workers {
    backoff: Backoff,
    started: Vec<Worker>,
    health: WorkerHealth,
}

impl Workers {
    /// No workers yet; failed runs are restarted after `backoff`.
    #[must_use]
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            ..Self::default()
        }
    }

    /// The health of every worker, for `/readyz`.
    #[must_use]
    pub fn health(&self) -> WorkerHealth {
        self.health.clone()
    }

    /// Starts `task` under `name` (must be called within a Tokio runtime).
    pub fn spawn<F, Fut>(&mut self, name: &'static str, task: F)
    where
        F: Fn(WorkerContext) -> Fut + Send + 'static,
        Fut: Future<Output = WorkerResult> + Send + 'static,
    {
        let (stop, stop_rx) = watch::channel(false);
        let status = Arc::new(Status {
            name,
            failure: Mutex::new(None),
            degraded: Mutex::new(None),
        });
        self.health
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&status));
        let context = WorkerContext {
            stop: stop_rx,
            status,
        };
        // Logged here, not by the supervisor, so that the lines come in
        // start order.
        tracing::info!(worker = name, "worker started");
        let supervisor = tokio::spawn(supervise(context, task, self.backoff));
        self.started.push(Worker {
            name,
            stop,
            supervisor,
        });
    }

    /// Stops every worker, the last started first, each within what is left
    /// of `budget`; a worker still running then is dropped at its next
    /// await point. Logs `worker stopped` for each.
    pub async fn shutdown(self, budget: Duration) {
        let deadline = Instant::now() + budget;
        for worker in self.started.into_iter().rev() {
            let _ = worker.stop.send(true);
            let mut supervisor = worker.supervisor;
            if tokio::time::timeout_at(deadline, &mut supervisor)
                .await
                .is_ok()
            {
                tracing::info!(worker = worker.name, "worker stopped");
            } else {
                supervisor.abort();
                let _ = supervisor.await;
                tracing::warn!(
                    worker = worker.name,
                    "worker stopped: dropped, as it did not stop within the shutdown timeout"
                );
            }
        }
    }
}

/// Runs `task` until it succeeds or the worker is told to stop, restarting
/// it after a back-off whenever it fails.
async fn supervise<F, Fut>(context: WorkerContext, task: F, backoff: Backoff)
where
    F: Fn(WorkerContext) -> Fut + Send + 'static,
    Fut: Future<Output = WorkerResult> + Send + 'static,
{
    let name = context.name();
    let mut wait = backoff.initial;
    let mut restarts: u64 = 0;
    loop {
        if restarts > 0 {
            tracing::info!(worker = name, restarts, "worker restarted");
        }
        let run = AssertUnwindSafe(task(context.clone())).catch_unwind();
        tokio::pin!(run);
        let healthy_at = tokio::time::sleep(backoff.reset_after);
        tokio::pin!(healthy_at);
        let mut healthy = false;
        let outcome = loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                () = &mut healthy_at, if !healthy => {
                    healthy = true;
                    wait = backoff.initial;
                    context.status.set_failure(None);
                }
            }
        };
        let failure = match outcome {
            Ok(Ok(())) => {
                if !context.is_stopping() {
                    tracing::info!(worker = name, "worker finished");
                }
                return;
            }
            Ok(Err(err)) => err.to_string(),
            Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
        };
        if context.is_stopping() {
            tracing::warn!(worker = name, error = %failure, "worker failed while stopping");
            return;
        }
        tracing::error!(
            worker = name,
            error = %failure,
            restart_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "worker failed; restarting after a back-off"
        );
        context.status.set_failure(Some(failure));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = context.stopping() => return,
        }
        wait = (wait * 2).min(backoff.max);
        restarts += 1;
    }
}

/// The text of a panic payload (`panic!` with a literal or a format).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a non-string payload)")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn quick() -> Backoff {
        Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
            reset_after: Duration::from_secs(60),
        }
    }

    /// Waits (at most 10 s) until `done` holds.
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        done()
    }

    #[tokio::test]
    async fn a_task_that_panics_is_restarted_and_counts_as_failing_meanwhile() {
        let runs = Arc::new(AtomicUsize::new(0));
        let mut workers = Workers::new(Backoff {
            initial: Duration::from_millis(300),
            ..quick()
        });
        let counted = Arc::clone(&runs);
        workers.spawn("panicky", move |context| {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(run != 0, "the first run panics");
                context.stopping().await;
                Ok(())
            }
        });
        let health = workers.health();
        assert!(eventually(|| health.failing().is_some()).await);
        let failing = health.failing().unwrap_or_default();
        assert!(
            failing.starts_with("worker panicky: panicked: the first run panics"),
            "{failing}"
        );
        assert!(eventually(|| runs.load(Ordering::SeqCst) == 2).await);
        workers.shutdown(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_task_that_returns_an_error_is_restarted_with_growing_waits() {
        let runs = Arc::new(AtomicUsize::new(0));
        let mut workers = Workers::new(quick());
        let counted = Arc::clone(&runs);
        workers.spawn("flaky", move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Err("no luck".into()) }
        });
        assert!(eventually(|| runs.load(Ordering::SeqCst) >= 5).await);
        assert!(
            workers
                .health()
                .failing()
                .is_some_and(|f| f == "worker flaky: no luck")
        );
        workers.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_run_that_lasts_reset_after_clears_the_failure() {
        let mut workers = Workers::new(Backoff {
            reset_after: Duration::from_millis(100),
            ..quick()
        });
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        workers.spawn("recovers", move |context| {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if run == 0 {
                    return Err("first run fails".into());
                }
                context.stopping().await;
                Ok(())
            }
        });
        let health = workers.health();
        assert!(eventually(|| runs.load(Ordering::SeqCst) == 2).await);
        assert!(eventually(|| health.failing().is_none()).await);
        workers.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_task_can_mark_itself_degraded() {
        let mut workers = Workers::new(quick());
        workers.spawn("self-aware", |context| async move {
            context.set_degraded("the queue is stuck");
            context.stopping().await;
            context.set_healthy();
            Ok(())
        });
        let health = workers.health();
        assert!(eventually(|| health.failing().is_some()).await);
        assert_eq!(
            health.failing().as_deref(),
            Some("worker self-aware: the queue is stuck")
        );
        workers.shutdown(Duration::from_secs(5)).await;
        assert_eq!(health.failing(), None);
    }

    fn recording(workers: &mut Workers, order: &Arc<Mutex<Vec<&'static str>>>) {
        for name in ["first", "second", "third"] {
            let order = Arc::clone(order);
            workers.spawn(name, move |context| {
                let order = Arc::clone(&order);
                async move {
                    context.stopping().await;
                    order
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(name);
                    Ok(())
                }
            });
        }
    }

    #[tokio::test]
    async fn shutdown_stops_workers_in_reverse_start_order() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Workers::new(quick());
        recording(&mut workers, &order);
        workers.shutdown(Duration::from_secs(5)).await;
        assert_eq!(
            *order.lock().unwrap_or_else(PoisonError::into_inner),
            ["third", "second", "first"]
        );
    }

    #[tokio::test]
    async fn a_worker_that_ignores_the_stop_signal_is_dropped_when_the_budget_is_spent() {
        let mut workers = Workers::new(quick());
        workers.spawn("stuck", |_| std::future::pending());
        let started = Instant::now();
        workers.shutdown(Duration::from_millis(300)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
