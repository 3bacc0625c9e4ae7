//! Background workers, through the production `Application`: a worker that
//! panics is restarted, and `/readyz` answers `503` while it is failing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use tokio::sync::Notify;

use crate::helpers::{Backend, TestApp, spawn_app_with_workers};

/// Generous: the default back-off waits 1 s before the restart.
const WITHIN: Duration = Duration::from_secs(15);

async fn readyz(app: &TestApp) -> u16 {
    app.send_as("", Method::GET, "/readyz", None).await.status
}

/// Polls until `done` holds, for at most [`WITHIN`].
async fn eventually(mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + WITHIN;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_panics_is_restarted_and_readyz_is_503_until_it_reports_healthy() {
    let runs = Arc::new(AtomicUsize::new(0));
    let recovered = Arc::new(Notify::new());
    let (counted, signal) = (Arc::clone(&runs), Arc::clone(&recovered));
    let app = spawn_app_with_workers(Backend::Sqlite, move |app| {
        app.spawn_worker("test-panicky", move |context| {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            let signal = Arc::clone(&signal);
            async move {
                assert!(run > 0, "the first run of test-panicky panics");
                tokio::select! {
                    () = signal.notified() => context.set_healthy(),
                    () = context.stopping() => return Ok(()),
                }
                context.stopping().await;
                Ok(())
            }
        });
    })
    .await;

    assert!(eventually(async || readyz(&app).await == 503).await);
    let reply = app.send_as("", Method::GET, "/readyz", None).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.error_code(), "unavailable", "{}", reply.text);
    assert_eq!(
        app.send_as("", Method::GET, "/healthz", None).await.status,
        200
    );
    assert!(
        eventually(async || runs.load(Ordering::SeqCst) == 2).await,
        "not restarted: {} runs",
        runs.load(Ordering::SeqCst)
    );
    // Restarted, but not yet known to be well.
    assert_eq!(readyz(&app).await, 503);

    recovered.notify_one();
    assert!(eventually(async || readyz(&app).await == 200).await);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
