//! The HTTP suite: every scenario runs against the real service, once on
//! PostgreSQL and once on SQLite.

mod helpers;

/// Instantiates each scenario `async fn name(app: TestApp)` once per store,
/// as `name::postgres` and `name::sqlite`.
macro_rules! both_stores {
    ($($scenario:ident),+ $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let app = $crate::helpers::spawn_app($crate::helpers::Backend::Postgres).await;
                    super::$scenario(app).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = $crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await;
                    super::$scenario(app).await;
                }
            }
        )+
    };
}

/// Runs `scenario(backend)` once per store, as `name::postgres` and `name::sqlite`.
macro_rules! per_store {
    ($($scenario:ident),+ $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$scenario($crate::helpers::Backend::Postgres).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$scenario($crate::helpers::Backend::Sqlite).await;
                }
            }
        )+
    };
}

mod admin_export;
mod auth;
mod authorization;
mod binary;
mod changes;
mod cli;
mod cluster;
mod concurrency;
mod conditional;
mod connections;
mod create;
mod dashboard;
mod delete;
mod erasure;
mod errors;
mod export;
mod flood;
mod get;
mod idempotency;
mod limits;
mod list;
mod logs;
mod openapi;
mod operations;
mod outage;
mod pool;
mod retention;
mod revisions;
mod safe_writes;
mod scale_out;
mod scoping;
mod shutdown;
mod stats;
mod store_keys;
mod timestamps;
mod tokens;
mod update;
mod webhooks;
mod widget;
mod workers;
