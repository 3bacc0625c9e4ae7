//! What each subcommand does.

use std::io::Write;

use crate::app::Application;
use crate::auth;
use crate::config::{Cli, Command, DatabaseArgs, KeysCommand, WebhooksCommand};
use crate::feedback::TenantId;
use crate::http::BODY_LIMIT_BYTES;
use crate::store::{self, ApiKeyRecord, Revocation, Store, WebhookEndpoint};

/// Any failure of a command, shown to the operator as one line.
pub type CommandError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the command the command line names (`serve` by default).
pub async fn run(cli: Cli) -> Result<(), CommandError> {
    let (command, database) = cli.into_command();
    match command {
        Command::Serve(serve) => {
            tracing::info!(
                database = %database.database_url,
                listen_addr = %serve.listen_addr,
                body_limit_bytes = BODY_LIMIT_BYTES,
                "starting"
            );
            // Listen for SIGINT/SIGTERM before anything slow: an orchestrator
            // may stop a replica while it still connects or migrates, and the
            // default action of SIGTERM would kill it mid-migration.
            let mut signals = ShutdownSignals::install();
            let app = tokio::select! {
                app = Application::build(serve, &database) => app?,
                signal = signals.recv() => {
                    tracing::info!(signal, "received before start-up finished; not serving");
                    return Ok(());
                }
            };
            tracing::info!(addr = %app.local_addr()?, "listening");
            app.run_until(async move {
                let signal = signals.recv().await;
                tracing::info!(signal, "received; shutting down");
            })
            .await?;
            Ok(())
        }
        Command::Migrate => {
            let store = store::connect(&database.store_options()).await?;
            store.close().await;
            eprintln!("migrations applied to {}", database.database_url);
            Ok(())
        }
        Command::Keys(keys) => run_keys(keys, &database).await,
        Command::Webhooks(webhooks) => {
            let store = store::connect(&database.store_options()).await?;
            let result = run_webhooks_on(webhooks, store.as_ref()).await;
            store.close().await;
            result
        }
        Command::Healthcheck { listen_addr } => healthcheck(listen_addr).await,
    }
}

/// `GET /healthz` over plain HTTP/1.1 on the listen address; success only on
/// a 200 within 3 seconds. Containers run it as their health check (the
/// runtime image has no curl).
async fn healthcheck(listen_addr: std::net::SocketAddr) -> Result<(), CommandError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut addr = listen_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut head = [0_u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(std::time::Duration::from_secs(3), check)
        .await
        .map_err(|_| format!("no answer from http://{addr}/healthz within 3 s"))?
        .map_err(|err| format!("http://{addr}/healthz: {err}"))?;
    if head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200") {
        Ok(())
    } else {
        Err(format!(
            "http://{addr}/healthz answered {:?}",
            String::from_utf8_lossy(&head)
        )
        .into())
    }
}

async fn run_keys(command: KeysCommand, database: &DatabaseArgs) -> Result<(), CommandError> {
    let store = store::connect(&database.store_options()).await?;
    let result = run_keys_on(command, store.as_ref()).await;
    store.close().await;
    result
}

async fn run_keys_on(command: KeysCommand, store: &dyn Store) -> Result<(), CommandError> {
    match command {
        KeysCommand::Create {
            tenant,
            admin,
            name,
        } => {
            let key = match tenant {
                Some(tenant) if !admin => auth::generate_key(
                    TenantId::parse(tenant).map_err(|e| format!("--tenant: {}", e.message))?,
                    name,
                ),
                _ => auth::generate_admin_key(name),
            };
            store.insert_api_key(&key.record).await?;
            let holder = key.record.tenant.as_ref().map_or_else(
                || "an admin key (all tenants, only the admin export)".to_owned(),
                |tenant| format!("for tenant {tenant}"),
            );
            eprintln!(
                "created key {} {holder}; the secret below is shown only once",
                key.record.id
            );
            println!("{}", key.secret);
        }
        KeysCommand::List { tenant, json } => {
            let tenant = tenant
                .map(TenantId::parse)
                .transpose()
                .map_err(|e| format!("--tenant: {}", e.message))?;
            let keys = store.list_api_keys(tenant.as_ref()).await?;
            print_keys(&keys, json)?;
        }
        KeysCommand::Revoke { key_id } => match store.revoke_api_key(&key_id).await? {
            Revocation::Revoked => eprintln!(
                "revoked {key_id}; servers stop accepting it within {} seconds",
                auth::KEY_CACHE_TTL.as_secs() + 1
            ),
            Revocation::AlreadyRevoked => eprintln!("{key_id} was already revoked"),
            Revocation::NotFound => return Err(format!("no API key with id {key_id:?}").into()),
        },
    }
    Ok(())
}

fn print_keys(keys: &[ApiKeyRecord], json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let time = |t: chrono::DateTime<chrono::Utc>| crate::http::format_timestamp(t);
    if json {
        for key in keys {
            let line = serde_json::json!({
                "id": key.id,
                "tenant": key.tenant.as_ref().map(TenantId::as_str),
                "name": key.name,
                "prefix": key.prefix,
                "created_at": time(key.created_at),
                "revoked_at": key.revoked_at.map(time),
            });
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<22} {:<20} {:<20} {:<14} {:<26} REVOKED",
        "ID", "TENANT", "NAME", "PREFIX", "CREATED"
    )?;
    for key in keys {
        writeln!(
            out,
            "{:<22} {:<20} {:<20} {:<14} {:<26} {}",
            key.id,
            key.tenant.as_ref().map_or("(admin)", TenantId::as_str),
            key.name.as_deref().unwrap_or("-"),
            key.prefix,
            time(key.created_at),
            key.revoked_at.map_or_else(|| "-".to_owned(), time),
        )?;
    }
    Ok(())
}

async fn run_webhooks_on(command: WebhooksCommand, store: &dyn Store) -> Result<(), CommandError> {
    match command {
        WebhooksCommand::List { tenant, json } => {
            let tenant = tenant
                .map(TenantId::parse)
                .transpose()
                .map_err(|e| format!("--tenant: {}", e.message))?;
            let endpoints = store.list_webhook_endpoints(tenant.as_ref()).await?;
            print_webhooks(&endpoints, json)?;
        }
        WebhooksCommand::Remove { endpoint_id } => {
            if store.delete_webhook_endpoint(None, &endpoint_id).await? {
                eprintln!("removed {endpoint_id} and its deliveries");
            } else {
                return Err(format!("no webhook endpoint with id {endpoint_id:?}").into());
            }
        }
    }
    Ok(())
}

fn print_webhooks(endpoints: &[WebhookEndpoint], json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let time = |t: chrono::DateTime<chrono::Utc>| crate::http::format_timestamp(t);
    if json {
        for endpoint in endpoints {
            let line = serde_json::json!({
                "id": endpoint.id,
                "tenant": endpoint.tenant.as_str(),
                "url": endpoint.url,
                "events": endpoint.events.split(',').collect::<Vec<_>>(),
                "created_at": time(endpoint.created_at),
                "disabled_at": endpoint.disabled_at.map(time),
            });
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<35} {:<20} {:<26} {:<26} {:<50} URL",
        "ID", "TENANT", "CREATED", "DISABLED", "EVENTS"
    )?;
    for endpoint in endpoints {
        writeln!(
            out,
            "{:<35} {:<20} {:<26} {:<26} {:<50} {}",
            endpoint.id,
            endpoint.tenant,
            time(endpoint.created_at),
            endpoint.disabled_at.map_or_else(|| "-".to_owned(), time),
            endpoint.events,
            endpoint.url,
        )?;
    }
    Ok(())
}

/// SIGINT and SIGTERM, listened for from the moment `install` returns.
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    /// Replaces the default action of both signals (terminate the process)
    /// at once; a signal that cannot be listened for is logged and never
    /// arrives.
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(signal) => Some(signal),
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for {name}");
                    None
                }
            };
            Self {
                interrupt: listen(SignalKind::interrupt(), "SIGINT"),
                terminate: listen(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for the next SIGINT or SIGTERM; says which.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn next(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(self.interrupt.as_mut()) => "SIGINT",
                () = next(self.terminate.as_mut()) => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "SIGINT",
                Err(_) => std::future::pending().await,
            }
        }
    }
}
