//! `ThrowawayCluster`: a PostgreSQL server of a test's own, in a temporary
//! directory, that the test may stop, kill and start again (the shared test
//! server must never be touched that way).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::binary::free_port;

/// Set to skip the tests that need a throwaway cluster (no PostgreSQL
/// binaries on this machine).
pub(crate) const SKIP_VARIABLE: &str = "LLM_FEEDBACK_SKIP_CLUSTER_TESTS";

/// How long `pg_ctl` may wait for the server to start or stop.
const PG_CTL_WAIT_SECS: &str = "60";

/// A fresh PostgreSQL cluster: trust auth, superuser `postgres`, listening on
/// 127.0.0.1 only, default durability (`fsync=on`). Stopped (immediately) and
/// deleted when dropped.
pub(crate) struct ThrowawayCluster {
    /// The folder of `initdb`, `pg_ctl` and `postgres`.
    bin: PathBuf,
    port: u16,
    is_running: bool,
    // Last: removed after the server has been stopped.
    dir: tempfile::TempDir,
}

impl ThrowawayCluster {
    /// Creates and starts a cluster; `None`, after saying so on stderr, when
    /// `LLM_FEEDBACK_SKIP_CLUSTER_TESTS` is set.
    pub(crate) async fn create(test: &str) -> Option<Self> {
        if std::env::var_os(SKIP_VARIABLE).is_some_and(|value| !value.is_empty() && value != "0") {
            eprintln!("skipped: {test}: {SKIP_VARIABLE} is set");
            return None;
        }
        // initdb's panic (e.g. no PostgreSQL installed) as the test's own.
        let mut cluster = tokio::task::spawn_blocking(Self::init)
            .await
            .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
        cluster.start().await;
        Some(cluster)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server on its data directory and port; returns once it
    /// accepts connections.
    pub(crate) async fn start(&mut self) {
        let log = self.dir.path().join("postgres.log");
        let args = vec![
            "-D".into(),
            self.data_dir().into_os_string(),
            "-l".into(),
            log.into_os_string(),
            "-w".into(),
            "-t".into(),
            PG_CTL_WAIT_SECS.into(),
            "start".into(),
        ];
        self.pg_ctl(args, "start").await;
        self.is_running = true;
    }

    /// Stops the server as an operator would: `pg_ctl stop -m fast`, which
    /// disconnects every client and checkpoints; returns once it is down.
    pub(crate) async fn stop(&mut self) {
        self.stop_with("fast").await;
    }

    /// Stops the server as a crash would: `pg_ctl stop -m immediate`, no
    /// checkpoint (recovery replays the WAL at the next start).
    pub(crate) async fn kill(&mut self) {
        self.stop_with("immediate").await;
    }

    async fn stop_with(&mut self, mode: &str) {
        let args = vec![
            "-D".into(),
            self.data_dir().into_os_string(),
            "-m".into(),
            mode.into(),
            "-w".into(),
            "-t".into(),
            PG_CTL_WAIT_SECS.into(),
            "stop".into(),
        ];
        self.pg_ctl(args, &format!("stop -m {mode}")).await;
        self.is_running = false;
    }

    /// Runs `pg_ctl ARGS` off the async runtime; panics with the server log
    /// if it fails.
    async fn pg_ctl(&self, args: Vec<std::ffi::OsString>, what: &str) {
        let pg_ctl = self.bin.join("pg_ctl");
        let output = tokio::task::spawn_blocking(move || run_as_postgres(&pg_ctl, &args))
            .await
            .expect("pg_ctl panicked");
        assert!(
            output.status.success(),
            "pg_ctl {what} failed ({}):\n{}{}\nserver log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_tail()
        );
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `initdb` into a new temporary directory, and the settings.
    fn init() -> Self {
        let bin = postgres_bin_dir();
        // Under /tmp: the postgres user may not be able to enter our folders.
        let dir = tempfile::Builder::new()
            .prefix("llm-feedback-cluster-")
            .tempdir_in("/tmp")
            .expect("cannot create a temp dir under /tmp");
        if is_root() {
            let chown = Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(chown.success(), "chown postgres: {}", dir.path().display());
        }
        let data = dir.path().join("data");
        // `--no-sync`: initdb's files need to survive the server being
        // stopped or killed, not the machine crashing; the server itself
        // runs with fsync on.
        let output = run_as_postgres(
            &bin.join("initdb"),
            &[
                "-D".into(),
                data.clone().into_os_string(),
                "-U".into(),
                "postgres".into(),
                "--auth=trust".into(),
                "--encoding=UTF8".into(),
                "--locale=C".into(),
                "--no-sync".into(),
            ],
        );
        assert!(
            output.status.success(),
            "initdb failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let port = free_port();
        let settings = format!(
            "\n# ThrowawayCluster\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{}'\n\
             fsync = on\n\
             synchronous_commit = on\n\
             shared_buffers = 16MB\n\
             max_connections = 30\n",
            dir.path().display()
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str(&settings);
        // Rewriting keeps the file's owner (the postgres user when root).
        std::fs::write(&conf, text).expect("write postgresql.conf");
        Self {
            bin,
            port,
            is_running: false,
            dir,
        }
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        // Also after a failed start, which may have left a server behind.
        if self.is_running || self.data_dir().join("postmaster.pid").exists() {
            let _ = run_as_postgres(
                &self.bin.join("pg_ctl"),
                &[
                    "-D".into(),
                    self.data_dir().into_os_string(),
                    "-m".into(),
                    "immediate".into(),
                    "-w".into(),
                    "-t".into(),
                    PG_CTL_WAIT_SECS.into(),
                    "stop".into(),
                ],
            );
        }
    }
}

/// Runs a PostgreSQL program, as the `postgres` system user when we are
/// root (initdb and postgres refuse to run as root), from `/` (which that
/// user can always enter).
fn run_as_postgres(program: &Path, args: &[std::ffi::OsString]) -> Output {
    let mut command = if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    command
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", program.display()))
}

fn is_root() -> bool {
    static IS_ROOT: OnceLock<bool> = OnceLock::new();
    *IS_ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
    })
}

/// The folder of `initdb` on PATH, else of the highest
/// `/usr/lib/postgresql/*/bin/initdb` (as scripts/test.sh picks it).
fn postgres_bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("initdb"))
        .find(|initdb| initdb.is_file());
    let initdb = on_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let initdb = entry.path().join("bin").join("initdb");
                initdb.is_file().then_some((version, initdb))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, initdb)| initdb)
    });
    let Some(initdb) = initdb else {
        panic!(
            "initdb not found on PATH or under /usr/lib/postgresql/*/bin: these tests start a \
             PostgreSQL cluster of their own. Install PostgreSQL (e.g. apt-get install \
             postgresql), or set {SKIP_VARIABLE}=1 to skip them."
        );
    };
    // Through symlinks (e.g. /usr/local/bin/initdb), so that pg_ctl and
    // postgres come from the same installation.
    let initdb = std::fs::canonicalize(&initdb).unwrap_or(initdb);
    initdb
        .parent()
        .expect("initdb lives in a folder")
        .to_path_buf()
}
