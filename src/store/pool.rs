//! sqlx connections in a `deadpool` pool, with a manager that costs no I/O
//! per checkout.
//!
//! sqlx's own pool (0.8) pings every connection when it is given back, from a
//! task spawned for the purpose: one more round trip to the database for every
//! statement, which on a busy service costs about as much CPU as the statement
//! itself, on both sides. [`Manager`] hands connections out and takes them
//! back without touching the network:
//!
//! - a connection idle for at least `ping_if_idle_for` (PostgreSQL) is pinged
//!   before use: those are the ones a database restart leaves dead. A busy
//!   connection that died fails its statement, which answers 503;
//! - a connection goes back to the pool only when its caller
//!   [`settle`](PooledConnection::settle)s it after a statement (or a
//!   transaction) that finished, successfully or with an error the database
//!   reported. One dropped mid-statement (the request was cancelled) or that
//!   failed at the connection level is closed, never reused;
//! - connections live at most [`MAX_LIFETIME`] and idle at most
//!   [`IDLE_TIMEOUT`] (sqlx's defaults), so replicas follow a database that
//!   fails over or shrinks back after a burst.

use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Object, QueueMode, RecycleError, RecycleResult};
use sqlx::{ConnectOptions, Connection, Transaction};

use super::PoolStats;

/// Connections are replaced after this long (sqlx's default).
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Connections idle this long are closed (sqlx's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How often idle connections are checked against the two limits above.
const REAP_EVERY: Duration = Duration::from_secs(30);
/// How long closing one connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a pool connects and how many connections it keeps.
#[derive(Debug, Clone)]
pub(super) struct PoolConfig<O> {
    /// How to open a connection.
    pub(super) connect: O,
    /// The most connections open at once.
    pub(super) max_connections: u32,
    /// How long [`Pool::acquire`] waits (for a free connection and for
    /// opening one) before it gives up with `PoolTimedOut`.
    pub(super) acquire_timeout: Duration,
    /// Ping a connection before use when it has been idle this long.
    pub(super) ping_if_idle_for: Option<Duration>,
    /// The statement that opens a transaction (`None`: the driver's `BEGIN`).
    pub(super) begin: Option<&'static str>,
}

/// A connection as the pool keeps it.
#[derive(Debug)]
pub(super) struct Managed<C> {
    conn: C,
    /// Set by [`PooledConnection::settle`]: everything run on it finished.
    reusable: bool,
    /// When it was last given back (or opened).
    idle_since: Instant,
}

/// Opens and recycles connections for `deadpool`.
#[derive(Debug)]
pub(super) struct Manager<C: Connection> {
    config: PoolConfig<C::Options>,
}

impl<C: Connection + 'static> managed::Manager for Manager<C> {
    type Type = Managed<C>;
    type Error = sqlx::Error;

    /// Opens a connection. While the database refuses connections (it is
    /// starting) or says it cannot take one now, tries again with backoff
    /// until shortly before the acquire timeout, then returns the last error
    /// (more telling than a timeout).
    async fn create(&self) -> sqlx::Result<Managed<C>> {
        let deadline = tokio::time::Instant::now() + self.config.acquire_timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let err = match self.config.connect.connect().await {
                Ok(conn) => {
                    return Ok(Managed {
                        conn,
                        reusable: true,
                        idle_since: Instant::now(),
                    });
                }
                Err(err) => err,
            };
            let transient = match &err {
                sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
                sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    // cannot_connect_now (starting up), too_many_connections
                    code == "57P03" || code == "53300"
                }),
                _ => false,
            };
            if !transient || tokio::time::Instant::now() + backoff * 2 >= deadline {
                return Err(err);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Refuses a connection that was not settled (dropped mid-statement) or
    /// is past its lifetime; pings one idle for `ping_if_idle_for`.
    async fn recycle(&self, obj: &mut Managed<C>, metrics: &Metrics) -> RecycleResult<sqlx::Error> {
        if !obj.reusable {
            return Err(RecycleError::message("dropped mid-statement"));
        }
        if metrics.age() >= MAX_LIFETIME {
            return Err(RecycleError::message("past its lifetime"));
        }
        let stale = self
            .config
            .ping_if_idle_for
            .is_some_and(|after| obj.idle_since.elapsed() >= after);
        if stale {
            obj.conn.ping().await?;
        }
        Ok(())
    }
}

/// A fixed-size pool of sqlx connections.
#[derive(Debug)]
pub(super) struct Pool<C: Connection + 'static> {
    inner: managed::Pool<Manager<C>>,
    acquire_timeout: Duration,
    begin: Option<&'static str>,
}

impl<C: Connection + 'static> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            acquire_timeout: self.acquire_timeout,
            begin: self.begin,
        }
    }
}

impl<C: Connection + 'static> Pool<C> {
    /// A pool that opens connections on demand (none yet). Must be called
    /// within a Tokio runtime: it starts the task that retires idle
    /// connections.
    pub(super) fn new(config: PoolConfig<C::Options>) -> Self {
        let acquire_timeout = config.acquire_timeout;
        let begin = config.begin;
        let max_size = usize::try_from(config.max_connections).unwrap_or(usize::MAX);
        let inner = managed::Pool::builder(Manager { config })
            .max_size(max_size)
            // The most recently used first: the others idle out.
            .queue_mode(QueueMode::Lifo)
            .build();
        let inner = match inner {
            Ok(inner) => inner,
            // Only a timeout without a runtime fails the build; none is set.
            Err(err) => unreachable!("deadpool build: {err}"),
        };
        tokio::spawn(reap(inner.weak()));
        Self {
            inner,
            acquire_timeout,
            begin,
        }
    }

    /// A connection: an idle one if any (the most recently used), else a new
    /// one. Waits for a free slot at most `acquire_timeout` in all.
    pub(super) async fn acquire(&self) -> sqlx::Result<PooledConnection<C>> {
        let object = tokio::time::timeout(self.acquire_timeout, self.inner.get())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|err| match err {
                managed::PoolError::Backend(err) => err,
                managed::PoolError::Timeout(_) => sqlx::Error::PoolTimedOut,
                managed::PoolError::Closed
                | managed::PoolError::NoRuntimeSpecified
                | managed::PoolError::PostCreateHook(_) => sqlx::Error::PoolClosed,
            })?;
        let mut conn = PooledConnection {
            object: Some(object),
            begin: self.begin,
        };
        conn.managed().reusable = false;
        Ok(conn)
    }

    /// A connection of its own, opened as the pool opens its connections
    /// but outside it: not counted in its size, never given back, bound to
    /// the runtime that calls this (see `ExportStore::export_reader`).
    pub(super) async fn open_detached(&self) -> sqlx::Result<C> {
        managed::Manager::create(self.inner.manager())
            .await
            .map(|managed| managed.conn)
    }

    /// Connection counts, for metrics.
    pub(super) fn stats(&self, name: &'static str) -> PoolStats {
        let status = self.inner.status();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        PoolStats {
            pool: name,
            open: count(status.size),
            idle: count(status.available),
            max: count(status.max_size),
        }
    }

    /// Refuses new checkouts and closes the idle connections. Connections
    /// still in use (a request past the drain deadline) are closed when they
    /// are given back, or when the process exits: shutdown does not wait for
    /// them.
    pub(super) async fn close(&self) {
        let idle = self.inner.retain(|_, _| false).removed;
        self.inner.close();
        for managed in idle {
            close(managed.conn).await;
        }
    }
}

/// A connection checked out of a [`Pool`]; dereferences to the sqlx
/// connection. Goes back to the pool when dropped after
/// [`settle`](Self::settle), else is closed.
#[derive(Debug)]
pub(super) struct PooledConnection<C: Connection + 'static> {
    object: Option<Object<Manager<C>>>,
    begin: Option<&'static str>,
}

impl<C: Connection + 'static> PooledConnection<C> {
    fn managed(&mut self) -> &mut Managed<C> {
        // `object` is only taken in `drop`.
        match &mut self.object {
            Some(object) => object,
            None => unreachable!("a pooled connection is used after drop"),
        }
    }

    /// Gives the connection back for reuse: everything run on it finished.
    pub(super) fn release(mut self) {
        self.managed().reusable = true;
    }

    /// Passes a statement's (or a transaction's) result through, marking the
    /// connection reusable when it ran to its end: it succeeded or the
    /// database answered with an error. I/O and protocol errors close it.
    pub(super) fn settle<T>(mut self, result: sqlx::Result<T>) -> sqlx::Result<T> {
        self.managed().reusable = match &result {
            Ok(_) => true,
            Err(err) => leaves_connection_usable(err),
        };
        result
    }

    /// Opens a transaction the way this pool's database wants it (SQLite's
    /// writer: `BEGIN IMMEDIATE`). It rolls back when dropped uncommitted; a
    /// connection whose transaction was not committed is not settled, so it
    /// is closed rather than reused.
    pub(super) async fn begin(&mut self) -> sqlx::Result<Transaction<'_, C::Database>> {
        match self.begin {
            Some(statement) => Connection::begin_with(&mut **self, statement).await,
            None => Connection::begin(&mut **self).await,
        }
    }
}

/// Errors after which the connection is in a known state: the database said
/// no, or a row did not decode. Anything else (I/O, TLS, protocol) closes it.
fn leaves_connection_usable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Database(_)
            | sqlx::Error::RowNotFound
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::TypeNotFound { .. }
    )
}

impl<C: Connection + 'static> std::ops::Deref for PooledConnection<C> {
    type Target = C;

    fn deref(&self) -> &C {
        match &self.object {
            Some(object) => &object.conn,
            None => unreachable!("a pooled connection is used after drop"),
        }
    }
}

impl<C: Connection + 'static> std::ops::DerefMut for PooledConnection<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.managed().conn
    }
}

impl<C: Connection + 'static> Drop for PooledConnection<C> {
    fn drop(&mut self) {
        let Some(mut object) = self.object.take() else {
            return;
        };
        if object.reusable {
            object.idle_since = Instant::now();
            // `object` goes back to the pool here.
        } else {
            // Possibly mid-statement: out of the pool at once, and the socket
            // closed without a word.
            drop(Object::take(object));
        }
    }
}

/// Closes a healthy connection politely.
async fn close<C: Connection + 'static>(conn: C) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
}

/// Closes idle connections past [`IDLE_TIMEOUT`] or [`MAX_LIFETIME`], until
/// the pool is dropped or closed.
async fn reap<C: Connection + 'static>(pool: managed::WeakPool<Manager<C>>) {
    let mut ticks = tokio::time::interval(REAP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if pool.is_closed() {
            return;
        }
        let expired = pool
            .retain(|managed, metrics| {
                managed.idle_since.elapsed() < IDLE_TIMEOUT && metrics.age() < MAX_LIFETIME
            })
            .removed;
        drop(pool);
        for managed in expired {
            close(managed.conn).await;
        }
    }
}
