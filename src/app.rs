//! `Application`: a store, a router and a bound listener, ready to serve.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use std::num::NonZeroU32;

use crate::admin_export::Exporter;
use crate::auth;
use crate::config::{DatabaseArgs, DatabaseUrl, ServeArgs};
use crate::feedback::TenantId;
use crate::http::{self, HttpSettings, KeyRateLimiter};
use crate::store::{self, Store};
use crate::telemetry;
use crate::worker::{Backoff, WorkerContext, WorkerResult, Workers};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The store could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] store::ConnectError),
    /// A setting is invalid.
    #[error("{0}")]
    Config(String),
    /// The feedback token signing secret could not be loaded or stored.
    #[error("cannot load the feedback token signing secret: {0}")]
    TokenSecret(#[source] store::StoreError),
    /// Provisioning a key failed.
    #[error("cannot provision the bootstrap API key: {0}")]
    Bootstrap(#[source] store::StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The least time workers get to stop, even when the drain used the whole
/// shutdown budget.
const MIN_WORKER_STOP: Duration = Duration::from_secs(1);

/// A built service: migrated store, provisioned keys, bound socket.
pub struct Application {
    listener: TcpListener,
    store: Arc<dyn Store>,
    serve: ServeArgs,
    workers: Workers,
    /// Signs feedback tokens, with the secret the store holds.
    tokens: auth::token::TokenSigner,
}

impl Application {
    /// Connects and migrates the store, provisions keys, binds the listener.
    pub async fn build(serve: ServeArgs, database: &DatabaseArgs) -> Result<Self, StartupError> {
        // Install the metrics recorder before anything counts.
        telemetry::metrics_handle();
        let store = store::connect(&database.store_options()).await?;
        let first_run_key = bootstrap_keys(store.as_ref(), &serve, &database.database_url).await?;
        // Loaded once: tokens are then verified without the database.
        let tokens = auth::token::TokenSigner::load(store.as_ref())
            .await
            .map_err(StartupError::TokenSecret)?;
        let listener = TcpListener::bind(serve.listen_addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: serve.listen_addr,
                source,
            })?;
        if let Some(key) = first_run_key {
            let addr = listener.local_addr().unwrap_or(serve.listen_addr);
            print_first_run_banner(&key.secret, key.record.tenant.as_ref(), addr);
        }
        Ok(Self {
            listener,
            store,
            serve,
            workers: Workers::new(Backoff::default()),
            tokens,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The store the application serves from (tests provision keys with it,
    /// as the CLI does).
    #[must_use]
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Starts a supervised background task (see `crate::worker`) at once;
    /// the application's own workers start with `run_until`, so this one
    /// stops after them.
    pub fn spawn_worker<F, Fut>(&mut self, name: &'static str, task: F)
    where
        F: Fn(WorkerContext) -> Fut + Send + 'static,
        Fut: Future<Output = WorkerResult> + Send + 'static,
    {
        self.workers.spawn(name, task);
    }

    /// Starts the application's background workers (`start_workers`) and
    /// serves until `shutdown` completes, then stops accepting, lets
    /// in-flight requests finish for at most the shutdown timeout, stops the
    /// workers (the last started first, again for at most the shutdown
    /// timeout), and closes the store.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let rate_limiter = self
            .serve
            .rate_limit_per_second
            .and_then(NonZeroU32::new)
            .map(|per_second| {
                Arc::new(KeyRateLimiter::new(
                    per_second,
                    self.serve.rate_limit_burst.and_then(NonZeroU32::new),
                ))
            });
        let settings = HttpSettings {
            max_concurrent_requests: self.serve.max_concurrent_requests as usize,
            request_timeout: self.serve.request_timeout(),
            cors_allowed_origins: self.serve.cors_allowed_origins.clone(),
            idempotency_ttl: Duration::from_secs(self.serve.idempotency_ttl_secs),
            webhook_allow_private: self.serve.webhooks.webhook_allow_private_targets,
            change_retention_days: self.serve.change_retention_days,
        };
        let token_rate_limiter = NonZeroU32::new(self.serve.token_rate_limit_per_minute)
            .map(|per_minute| Arc::new(KeyRateLimiter::per_minute(per_minute)));
        let authenticator = auth::Authenticator::new(Arc::clone(&self.store), self.tokens.clone());
        let exporter = Exporter::new(Arc::clone(&self.store), &self.serve.export);
        tokio::spawn({
            let exporter = exporter.clone();
            async move { exporter.check_location().await }
        });
        start_workers(&mut self.workers, &authenticator, &exporter);
        start_safe_write_workers(&mut self.workers, &self.store, &self.serve);
        start_webhook_worker(&mut self.workers, &self.store, &self.serve);
        let router = http::router(
            Arc::clone(&self.store),
            authenticator,
            self.workers.health(),
            http::RateLimiters {
                keys: rate_limiter,
                tokens: token_rate_limiter,
            },
            self.serve.export_max_rows,
            &settings,
            exporter,
        );
        let connections = http::ConnectionSettings {
            header_read_timeout: self.serve.header_read_timeout(),
            idle_timeout: self.serve.idle_timeout(),
            max_connections: self.serve.max_connections,
            shutdown_timeout: self.serve.shutdown_timeout(),
        };
        // One shutdown budget for the drain and the workers together, so the
        // whole stop fits a container's grace period: the workers get what
        // the drain left, and at least `MIN_WORKER_STOP`.
        let (began_tx, mut began_rx) = tokio::sync::oneshot::channel();
        let shutdown = async move {
            shutdown.await;
            let _ = began_tx.send(tokio::time::Instant::now());
        };
        http::serve(self.listener, router, &connections, shutdown).await;
        let spent = began_rx
            .try_recv()
            .map_or(Duration::ZERO, |began| began.elapsed());
        let left = self.serve.shutdown_timeout().saturating_sub(spent);
        self.workers.shutdown(left.max(MIN_WORKER_STOP)).await;
        self.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Starts the background workers, in the order they depend on each other
/// (shutdown stops them in reverse). A new worker goes here.
fn start_workers(workers: &mut Workers, authenticator: &auth::Authenticator, exporter: &Exporter) {
    // Histogram samples pile up until upkeep folds them into buckets;
    // without a scraper that would be never: memory would grow with every
    // request.
    workers.spawn("metrics-upkeep", |context: WorkerContext| async move {
        let mut ticks = tokio::time::interval(telemetry::METRICS_UPKEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => telemetry::metrics_handle().run_upkeep(),
                () = context.stopping() => return Ok(()),
            }
        }
    });
    let authenticator = authenticator.clone();
    workers.spawn("key-set-reloader", move |context: WorkerContext| {
        let reload = authenticator.reload_key_set();
        async move {
            tokio::select! {
                () = reload => {}
                () = context.stopping() => {}
            }
            Ok(())
        }
    });
    // Runs the admin exports this replica accepted; stopped first, so that
    // a running export is closed FAILED while the store is still open.
    let exporter = exporter.clone();
    workers.spawn("admin-export", move |context: WorkerContext| {
        let exporter = exporter.clone();
        async move { exporter.serve(context).await }
    });
}

/// The upkeep of safe writes (src/upkeep.rs), after the others: the purge
/// of expired idempotent outcomes, with `RETENTION_DAYS` retention, and the
/// purge of changes older than `CHANGE_RETENTION_DAYS`.
fn start_safe_write_workers(workers: &mut Workers, store: &Arc<dyn Store>, serve: &ServeArgs) {
    let (purged, ttl) = (
        Arc::clone(store),
        Duration::from_secs(serve.idempotency_ttl_secs),
    );
    workers.spawn("idempotency-purge", move |context: WorkerContext| {
        crate::upkeep::purge_idempotency_keys(Arc::clone(&purged), ttl, context)
    });
    if let Some(days) = serve.retention_days {
        let retained = Arc::clone(store);
        workers.spawn("retention", move |context: WorkerContext| {
            crate::upkeep::enforce_retention(Arc::clone(&retained), days, context)
        });
    }
    let (changes, days) = (Arc::clone(store), serve.change_retention_days);
    workers.spawn("change-purge", move |context: WorkerContext| {
        crate::upkeep::purge_changes(Arc::clone(&changes), days, context)
    });
}

/// The webhook delivery worker (src/webhook/delivery.rs), one per replica
/// (unless `WEBHOOK_DELIVERY=false`).
fn start_webhook_worker(workers: &mut Workers, store: &Arc<dyn Store>, serve: &ServeArgs) {
    if !serve.webhooks.webhook_delivery {
        return;
    }
    let store = Arc::clone(store);
    let settings = crate::webhook::delivery::DeliverySettings {
        allow_private: serve.webhooks.webhook_allow_private_targets,
        timeout: Duration::from_millis(serve.webhooks.webhook_timeout_ms),
        schedule: serve.webhooks.webhook_retry_schedule.clone(),
    };
    workers.spawn("webhook-delivery", move |context: WorkerContext| {
        crate::webhook::delivery::deliver_webhooks(Arc::clone(&store), settings.clone(), context)
    });
}

/// Provisions `BOOTSTRAP_API_KEY` if set; otherwise, on a first start of the
/// embedded store, creates a key for tenant `default`, returned to be shown once.
async fn bootstrap_keys(
    store: &dyn Store,
    serve: &ServeArgs,
    url: &DatabaseUrl,
) -> Result<Option<auth::GeneratedKey>, StartupError> {
    let tenant = TenantId::parse(serve.bootstrap_tenant.clone())
        .map_err(|err| StartupError::Config(format!("BOOTSTRAP_TENANT: {}", err.message)))?;
    if let Some(secret) = &serve.bootstrap_api_key {
        auth::check_secret(secret.expose())
            .map_err(|err| StartupError::Config(format!("BOOTSTRAP_API_KEY: {err}")))?;
        let record = auth::key_record(secret.expose(), tenant, Some("bootstrap".to_owned()));
        // Idempotent: replicas starting together insert one row between them.
        let outcome = store
            .insert_api_key(&record)
            .await
            .map_err(StartupError::Bootstrap)?;
        let created = outcome == store::KeyInsertion::Inserted;
        tracing::info!(key_id = %record.id, created, "bootstrap API key provisioned");
        return Ok(None);
    }
    if !matches!(url, DatabaseUrl::Sqlite(_)) {
        return Ok(None);
    }
    let has_keys = !store
        .list_api_keys(None)
        .await
        .map_err(StartupError::Bootstrap)?
        .is_empty();
    if has_keys {
        return Ok(None);
    }
    let key = auth::generate_key(tenant, Some("first-run".to_owned()));
    store
        .insert_api_key(&key.record)
        .await
        .map_err(StartupError::Bootstrap)?;
    Ok(Some(key))
}

fn print_first_run_banner(secret: &str, tenant: Option<&TenantId>, addr: SocketAddr) {
    let tenant = tenant.map_or("", TenantId::as_str);
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let rule = "=".repeat(72);
    eprintln!(
        "\n{rule}\n  First run: created an API key for tenant \"{tenant}\". It is shown only once:\n\n    {secret}\n\n  Try it:\n\n    curl -X POST http://{host}/api/v1/llm/feedback/responses \\\n      -H 'Authorization: Bearer {secret}' \\\n      -H 'Content-Type: application/json' \\\n      -d '{{\"id\": \"resp-xyz789\", \"rating\": \"thumbs_up\"}}'\n\n  Manage keys with `llm-feedback keys --help`.\n{rule}\n"
    );
}
