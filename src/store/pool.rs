//! A connection pool that costs no I/O per checkout.
//!
//! sqlx's own pool (0.8) pings every connection when it is given back, from a
//! task spawned for the purpose: one more round trip to the database for every
//! statement, which on a busy service costs about as much CPU as the statement
//! itself, on both sides. This pool hands connections out and takes them back
//! without touching the network:
//!
//! - a connection idle for at least `ping_if_idle_for` (PostgreSQL) is pinged
//!   before use: those are the ones a database restart leaves dead. A busy
//!   connection that died fails its statement, which answers 503;
//! - a connection goes back to the pool only when its caller
//!   [`settle`](PooledConnection::settle)s it after a statement that finished
//!   (successfully or with an error the database reported). One dropped
//!   mid-statement (the request was cancelled) or that failed at the
//!   connection level is closed, never reused;
//! - connections live at most [`MAX_LIFETIME`] and idle at most
//!   [`IDLE_TIMEOUT`] (sqlx's defaults), so replicas follow a database that
//!   fails over or shrinks back after a burst.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use sqlx::{ConnectOptions, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::PoolStats;

/// Connections are replaced after this long (sqlx's default).
pub(super) const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Connections idle this long are closed (sqlx's default).
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
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
}

/// A fixed-size pool of sqlx connections.
#[derive(Debug)]
pub(super) struct Pool<C: Connection + 'static> {
    shared: Arc<Shared<C>>,
}

impl<C: Connection + 'static> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

#[derive(Debug)]
struct Shared<C: Connection + 'static> {
    config: PoolConfig<C::Options>,
    /// One permit per connection that may be in use.
    permits: Arc<Semaphore>,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<Idle<C>>>,
    /// Connections open (idle, in use, or being closed).
    open: Arc<AtomicU32>,
}

impl<C: Connection + 'static> Shared<C> {
    fn idle(&self) -> MutexGuard<'_, Vec<Idle<C>>> {
        // The lock is never held across anything that can panic.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An open connection, counted in `open` until it is dropped.
#[derive(Debug)]
struct Live<C> {
    conn: C,
    opened: Instant,
    _counted: OpenCount,
}

#[derive(Debug)]
struct Idle<C> {
    live: Live<C>,
    since: Instant,
}

#[derive(Debug)]
struct OpenCount(Arc<AtomicU32>);

impl OpenCount {
    fn new(open: &Arc<AtomicU32>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(open))
    }
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<C: Connection + 'static> Pool<C> {
    /// A pool that opens connections on demand (none yet). Must be called
    /// within a Tokio runtime: it starts the task that retires idle
    /// connections.
    pub(super) fn new(config: PoolConfig<C::Options>) -> Self {
        let shared = Arc::new(Shared {
            permits: Arc::new(Semaphore::new(config.max_connections as usize)),
            config,
            idle: Mutex::new(Vec::new()),
            open: Arc::new(AtomicU32::new(0)),
        });
        tokio::spawn(reap(Arc::downgrade(&shared)));
        Self { shared }
    }

    /// A connection: an idle one if any (the most recently used), else a new
    /// one. Waits for a free slot at most `acquire_timeout` in all.
    pub(super) async fn acquire(&self) -> sqlx::Result<PooledConnection<C>> {
        let deadline = tokio::time::Instant::now() + self.shared.config.acquire_timeout;
        tokio::time::timeout_at(deadline, self.checkout(deadline))
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut))
    }

    async fn checkout(&self, deadline: tokio::time::Instant) -> sqlx::Result<PooledConnection<C>> {
        let permit = Arc::clone(&self.shared.permits)
            .acquire_owned()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        loop {
            let Some(Idle { mut live, since }) = self.shared.idle().pop() else {
                break;
            };
            if live.opened.elapsed() >= MAX_LIFETIME {
                retire(live);
                continue;
            }
            let stale = self
                .shared
                .config
                .ping_if_idle_for
                .is_some_and(|after| since.elapsed() >= after);
            if stale && live.conn.ping().await.is_err() {
                // Dead (the database restarted): drop it, try the next one.
                continue;
            }
            return Ok(PooledConnection::new(live, &self.shared, permit));
        }
        let conn = self.open(deadline).await?;
        let live = Live {
            conn,
            opened: Instant::now(),
            _counted: OpenCount::new(&self.shared.open),
        };
        Ok(PooledConnection::new(live, &self.shared, permit))
    }

    /// Opens a connection. While the database refuses connections (it is
    /// starting) or says it cannot take one now, tries again with backoff
    /// until shortly before `deadline`, then returns the last error (more
    /// telling than a timeout).
    async fn open(&self, deadline: tokio::time::Instant) -> sqlx::Result<C> {
        let mut backoff = Duration::from_millis(10);
        loop {
            let err = match self.shared.config.connect.connect().await {
                Ok(conn) => return Ok(conn),
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

    /// Connection counts, for metrics.
    pub(super) fn stats(&self, name: &'static str) -> PoolStats {
        PoolStats {
            pool: name,
            open: self.shared.open.load(Ordering::Relaxed),
            idle: u32::try_from(self.shared.idle().len()).unwrap_or(u32::MAX),
            max: self.shared.config.max_connections,
        }
    }

    /// Refuses new checkouts and closes the idle connections. Connections
    /// still in use (a request past the drain deadline) are closed when they
    /// are given back, or when the process exits: shutdown does not wait for
    /// them.
    pub(super) async fn close(&self) {
        self.shared.permits.close();
        let idle = std::mem::take(&mut *self.shared.idle());
        for Idle { live, .. } in idle {
            close(live).await;
        }
    }
}

/// A connection checked out of a [`Pool`]; dereferences to the sqlx
/// connection. Goes back to the pool when dropped after
/// [`settle`](Self::settle), else is closed.
#[derive(Debug)]
pub(super) struct PooledConnection<C: Connection + 'static> {
    live: Option<Live<C>>,
    reusable: bool,
    shared: Arc<Shared<C>>,
    // Dropped after `live` went back to the idle list (fields drop after
    // `Drop::drop`), so whoever gets the permit next finds it there.
    _permit: OwnedSemaphorePermit,
}

impl<C: Connection + 'static> PooledConnection<C> {
    fn new(live: Live<C>, shared: &Arc<Shared<C>>, permit: OwnedSemaphorePermit) -> Self {
        Self {
            live: Some(live),
            reusable: false,
            shared: Arc::clone(shared),
            _permit: permit,
        }
    }

    /// Gives the connection back for reuse: everything run on it finished.
    pub(super) fn release(mut self) {
        self.reusable = true;
    }

    /// Passes a statement's result through, marking the connection reusable
    /// when the statement ran to its end: it succeeded or the database
    /// answered with an error. I/O and protocol errors close it.
    pub(super) fn settle<T>(mut self, result: sqlx::Result<T>) -> sqlx::Result<T> {
        self.reusable = match &result {
            Ok(_) => true,
            Err(err) => leaves_connection_usable(err),
        };
        result
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
        // `live` is only taken in `drop`.
        match &self.live {
            Some(live) => &live.conn,
            None => unreachable!("a pooled connection is used after drop"),
        }
    }
}

impl<C: Connection + 'static> std::ops::DerefMut for PooledConnection<C> {
    fn deref_mut(&mut self) -> &mut C {
        match &mut self.live {
            Some(live) => &mut live.conn,
            None => unreachable!("a pooled connection is used after drop"),
        }
    }
}

impl<C: Connection + 'static> Drop for PooledConnection<C> {
    fn drop(&mut self) {
        let Some(live) = self.live.take() else {
            return;
        };
        if !self.reusable {
            // Possibly mid-statement: the socket is closed without a word.
            drop(live);
        } else if self.shared.permits.is_closed() || live.opened.elapsed() >= MAX_LIFETIME {
            retire(live);
        } else {
            self.shared.idle().push(Idle {
                live,
                since: Instant::now(),
            });
        }
    }
}

/// Closes a healthy connection politely, in the background.
fn retire<C: Connection + 'static>(live: Live<C>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(close(live));
    }
}

async fn close<C: Connection + 'static>(live: Live<C>) {
    // Counted as open until it is closed.
    let Live {
        conn,
        _counted: counted,
        ..
    } = live;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close()).await;
    drop(counted);
}

/// Closes idle connections past [`IDLE_TIMEOUT`] or [`MAX_LIFETIME`], until
/// the pool is dropped or closed.
async fn reap<C: Connection + 'static>(shared: Weak<Shared<C>>) {
    let mut ticks = tokio::time::interval(REAP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.permits.is_closed() {
            return;
        }
        let expired: Vec<Idle<C>> = {
            let mut idle = shared.idle();
            let (expired, keep) = std::mem::take(&mut *idle).into_iter().partition(|entry| {
                entry.since.elapsed() >= IDLE_TIMEOUT || entry.live.opened.elapsed() >= MAX_LIFETIME
            });
            *idle = keep;
            expired
        };
        drop(shared);
        for Idle { live, .. } in expired {
            close(live).await;
        }
    }
}
