//! The admin export (MKA1's `start_export` / `get_export_status`): every
//! tenant's entries to two Apache Parquet files, one per kind, under
//! `EXPORT_LOCATION` (a directory or `s3://bucket/prefix`, through
//! `object_store`).
//!
//! One export runs at a time across all replicas: the job row's partial
//! unique index decides (see the migration). The replica that accepted the
//! `POST` runs it in its `admin-export` worker, keeps its progress in the
//! row and refreshes the row's heartbeat every quarter of the lease; a
//! reader on any replica closes a `RUNNING` row whose heartbeat is older
//! than the lease as `FAILED` (its process died). Shutdown stops a running
//! export between two batches and closes it `FAILED` ("interrupted by
//! shutdown").
//!
//! Rows are read in keyset pages by `seq` (up to the highest `seq` when the
//! export started) and written a page at a time into row groups of at most
//! [`ROW_GROUP_ROWS`] rows or [`ROW_GROUP_BYTES`] by parquet's `ArrowWriter`
//! on one thread of the export's own, and handed to object_store's buffered
//! multipart writer: memory does not grow with the number of entries.
//! All of it runs beside the API rather than on it: on a thread with a
//! runtime and a database connection of the export's own, at the nice value
//! `EXPORT_NICE` (see `Exporter::write_apart`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arrow_array::builder::{StringBuilder, TimestampMillisecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, SubsecRound as _, Utc};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use parquet::arrow::ArrowWriter;
use parquet::arrow::async_writer::AsyncFileWriter as _;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use tokio::sync::mpsc;

use crate::config::{ExportArgs, ExportLocation};
use crate::store::{
    ExportJob, ExportReader, ExportRow, JobEnd, JobFiles, JobProgress, JobStart, Store,
};
use crate::worker::{WorkerContext, WorkerResult};

/// Rows per Parquet row group: what one file holds in memory at most,
/// encoded, before it goes to the object store.
pub const ROW_GROUP_ROWS: usize = 16_384;
/// ... or fewer rows, when their encoded estimate reaches this (long
/// descriptions): what bounds the row group's memory whatever the entries.
pub const ROW_GROUP_BYTES: usize = 4 * 1024 * 1024;
/// Columns written without a dictionary: (nearly) every value differs.
const UNIQUE_COLUMNS: [&str; 4] = ["id", "description", "created_at", "updated_at"];
/// The object store writer's part size (S3's minimum multipart part) and
/// parts in flight at once, per file.
const UPLOAD_PART_BYTES: usize = 5 * 1024 * 1024;
const UPLOADS_IN_FLIGHT: usize = 1;
/// The error of an export stopped by shutdown.
pub const INTERRUPTED: &str = "interrupted by shutdown: the replica running this export stopped";

/// The Parquet schema of both files (API.md, "admin export").
#[must_use]
pub fn schema() -> SchemaRef {
    let utc = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("tenant", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, true),
        Field::new("rating", DataType::Utf8, true),
        Field::new("description", DataType::Utf8, true),
        Field::new("end_user", DataType::Utf8, true),
        Field::new("created_at", utc(), false),
        Field::new("updated_at", utc(), false),
    ]))
}

/// Starts exports and answers their status; cloned into the HTTP state and
/// the worker that runs them.
#[derive(Clone)]
pub struct Exporter(Arc<Inner>);

struct Inner {
    store: Arc<dyn Store>,
    location: ExportLocation,
    lease: Duration,
    batch_rows: i64,
    /// The nice value of the export's thread.
    nice: u8,
    /// This process, as job rows name their owner.
    owner: String,
    /// Jobs this replica accepted, for its worker.
    jobs: mpsc::Sender<ExportJob>,
    queue: tokio::sync::Mutex<mpsc::Receiver<ExportJob>>,
}

impl Exporter {
    /// An exporter over `store` with `settings`.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, settings: &ExportArgs) -> Self {
        let (jobs, queue) = mpsc::channel(4);
        Self(Arc::new(Inner {
            store,
            // A relative directory is shown (and used) as an absolute one.
            location: match &settings.export_location {
                ExportLocation::Local(dir) => {
                    ExportLocation::Local(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()))
                }
                s3 @ ExportLocation::S3 { .. } => s3.clone(),
            },
            lease: settings.lease(),
            batch_rows: i64::from(settings.export_batch_rows),
            nice: settings.export_nice,
            owner: uuid::Uuid::new_v4().simple().to_string(),
            jobs,
            queue: tokio::sync::Mutex::new(queue),
        }))
    }

    /// The configured location, for messages (never credentials: those
    /// come from the `AWS_*` variables).
    #[must_use]
    pub fn location(&self) -> String {
        self.0.location.to_string()
    }

    fn now() -> DateTime<Utc> {
        Utc::now().trunc_subsecs(3)
    }

    fn stale_before(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::Duration::from_std(self.0.lease).unwrap_or(chrono::Duration::MAX)
    }

    /// `POST /export`: starts an export on this replica unless one runs
    /// anywhere (then the running one).
    pub async fn start(&self) -> crate::store::StoreResult<JobStart> {
        let now = Self::now();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let outcome = self
            .0
            .store
            .start_export_job(&id, &self.0.owner, now, self.stale_before(now))
            .await?;
        if let JobStart::Started(job) = &outcome
            && self.0.jobs.try_send(job.clone()).is_err()
        {
            // The worker is stopping (or its queue is full: it never is,
            // one job runs at a time).
            let end = JobEnd::Failed {
                progress: failed_progress(&job.progress),
                error: INTERRUPTED.to_owned(),
            };
            self.0
                .store
                .finish_export_job(&job.id, &end, Self::now())
                .await?;
        }
        Ok(outcome)
    }

    /// `GET /export/status`: the latest job, a dead replica's closed as failed.
    pub async fn status(&self) -> crate::store::StoreResult<Option<ExportJob>> {
        let now = Self::now();
        self.0
            .store
            .latest_export_job(now, self.stale_before(now))
            .await
    }

    /// Warns (once, at start-up) if the location cannot be written to.
    pub async fn check_location(&self) {
        let probe = async {
            let (store, base) = self.object_store()?;
            let path = child(&base, ".llm-feedback-write-check");
            store
                .put(&path, object_store::PutPayload::from_static(b"ok"))
                .await
                .map_err(|err| self.location_error(&err))?;
            store
                .delete(&path)
                .await
                .map_err(|err| self.location_error(&err))?;
            Ok::<_, String>(())
        };
        match tokio::time::timeout(Duration::from_secs(10), probe).await {
            Ok(Ok(())) => {
                tracing::info!(location = %self.0.location, "export location is writable");
            }
            Ok(Err(error)) => tracing::warn!(%error, "admin exports will fail until this is fixed"),
            Err(_) => tracing::warn!(
                location = %self.0.location,
                "export location: no answer within 10 s; admin exports will fail until it answers"
            ),
        }
    }

    fn location_error(&self, err: &dyn std::fmt::Display) -> String {
        format!(
            "cannot write to the export location {}: {err}",
            self.0.location
        )
    }

    /// The object store and the base path under it.
    fn object_store(&self) -> Result<(Arc<dyn ObjectStore>, ObjectPath), String> {
        match &self.0.location {
            ExportLocation::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|err| self.location_error(&err))?;
                let store = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|err| self.location_error(&err))?;
                Ok((Arc::new(store), ObjectPath::default()))
            }
            ExportLocation::S3 { bucket, prefix } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if std::env::var("AWS_ENDPOINT_URL").is_ok_and(|url| url.starts_with("http://")) {
                    builder = builder.with_allow_http(true);
                }
                let store = builder.build().map_err(|err| self.location_error(&err))?;
                Ok((Arc::new(store), ObjectPath::from(prefix.as_str())))
            }
        }
    }

    /// What the `admin-export` worker runs: the jobs this replica accepted,
    /// one at a time, until shutdown.
    pub async fn serve(&self, context: WorkerContext) -> WorkerResult {
        let mut queue = self.0.queue.lock().await;
        loop {
            let job = tokio::select! {
                job = queue.recv() => job,
                () = context.stopping() => None,
            };
            let Some(job) = job else {
                // Jobs accepted but not begun are closed too.
                queue.close();
                while let Ok(job) = queue.try_recv() {
                    self.fail(&job.id, &job.progress, INTERRUPTED).await;
                }
                return Ok(());
            };
            self.run(job, &context).await;
        }
    }

    async fn fail(&self, id: &str, progress: &JobProgress, error: &str) {
        let end = JobEnd::Failed {
            progress: failed_progress(progress),
            error: error.to_owned(),
        };
        if let Err(err) = self.0.store.finish_export_job(id, &end, Self::now()).await {
            tracing::warn!(job = id, error = %err, "cannot close the failed export");
        }
    }

    /// Runs one job to its end, refreshing its heartbeat meanwhile.
    async fn run(&self, job: ExportJob, context: &WorkerContext) {
        let started = Instant::now();
        let progress = Arc::new(Mutex::new(JobProgress {
            stage: "fetching".to_owned(),
            message: "reading entries".to_owned(),
            ..JobProgress::default()
        }));
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let heartbeat = self.heartbeat(&job.id, &progress, &abandoned);
        let work = self.write_apart(&job, &progress, context, &abandoned);
        let outcome = tokio::select! {
            outcome = work => outcome,
            () = heartbeat => unreachable_heartbeat(),
        };
        let last = progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match outcome {
            Ok(files) => {
                let end = JobEnd::Completed {
                    progress: JobProgress {
                        stage: "completed".to_owned(),
                        message: format!(
                            "exported {} entries",
                            last.completion_count + last.response_count
                        ),
                        ..last
                    },
                    files,
                    duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
                };
                match self
                    .0
                    .store
                    .finish_export_job(&job.id, &end, Self::now())
                    .await
                {
                    Ok(()) => tracing::info!(job = %job.id, "admin export completed"),
                    Err(err) => {
                        tracing::warn!(job = %job.id, error = %err, "cannot close the export");
                    }
                }
            }
            Err(error) if abandoned.load(std::sync::atomic::Ordering::Relaxed) => {
                tracing::warn!(job = %job.id, %error, "admin export abandoned: another replica closed it");
            }
            Err(error) => {
                tracing::warn!(job = %job.id, %error, "admin export failed");
                self.fail(&job.id, &last, &error).await;
            }
        }
    }

    /// Stores the progress every quarter of the lease; sets `lost` if the
    /// row is no longer running (judged dead elsewhere). Never returns.
    async fn heartbeat(
        &self,
        id: &str,
        progress: &Mutex<JobProgress>,
        lost: &std::sync::atomic::AtomicBool,
    ) {
        let mut ticks = tokio::time::interval((self.0.lease / 4).max(Duration::from_millis(100)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            match self
                .0
                .store
                .heartbeat_export_job(id, &now, Self::now())
                .await
            {
                Ok(true) => {}
                Ok(false) => lost.store(true, std::sync::atomic::Ordering::Relaxed),
                Err(err) => {
                    tracing::warn!(job = id, error = %err, "cannot store the export's heartbeat");
                }
            }
        }
    }

    /// Runs [`Self::write`] on a thread of its own (`admin-export`) at nice
    /// value `EXPORT_NICE`, with a single-threaded runtime of its own: the
    /// export's work in this process (decoding the pages, encoding, the
    /// uploads, and on SQLite stepping its statement) then takes the CPU
    /// only when API requests leave it, instead of sharing the runtime's
    /// threads with them at the same priority. The heartbeat stays here.
    async fn write_apart(
        &self,
        job: &ExportJob,
        progress: &Arc<Mutex<JobProgress>>,
        context: &WorkerContext,
        lost: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<JobFiles, String> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let exporter = self.clone();
        let (job, progress) = (job.clone(), Arc::clone(progress));
        let (context, lost) = (context.clone(), Arc::clone(lost));
        std::thread::Builder::new()
            .name("admin-export".to_owned())
            .spawn(move || {
                lower_priority(exporter.0.nice);
                // Its blocking pool (local file writes, DNS) starts its
                // threads from this one: they inherit the nice value.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("export-blocking")
                    .build();
                let outcome = match runtime {
                    Ok(runtime) => runtime.block_on(async move {
                        let outcome = exporter.write(&job, &progress, &context, &lost).await;
                        // Dropped here, inside the runtime and before the
                        // outcome is sent: once it is, the worker may return
                        // and the application drop its store, and the last
                        // reference to the store (its pool, its listener)
                        // would otherwise be dropped on this thread outside
                        // any runtime, which sqlx answers with a panic.
                        drop((exporter, context));
                        outcome
                    }),
                    Err(err) => {
                        drop((exporter, context));
                        Err(format!("cannot start the export's runtime: {err}"))
                    }
                };
                // The receiver is gone only if the worker was dropped.
                drop(done.send(outcome));
            })
            .map_err(|err| format!("cannot start the export's thread: {err}"))?;
        outcome
            .await
            .unwrap_or_else(|_| Err("the export's thread stopped unexpectedly".to_owned()))
    }

    /// Writes both files; the error names the location, never credentials.
    /// Runs on the export's own thread ([`Self::write_apart`]).
    async fn write(
        &self,
        job: &ExportJob,
        progress: &Mutex<JobProgress>,
        context: &WorkerContext,
        lost: &std::sync::atomic::AtomicBool,
    ) -> Result<JobFiles, String> {
        let (store, base) = self.object_store()?;
        let stamp = job.started_at.format("%Y%m%dT%H%M%S%3fZ");
        let short_id = job.id.get(..8).unwrap_or(&job.id);
        let name = |kind: &str| format!("feedback-{kind}-{stamp}-{short_id}.parquet");
        let mut files = Files {
            completions: FileUpload::new(&store, child(&base, &name("completions"))),
            responses: FileUpload::new(&store, child(&base, &name("responses"))),
            buffered: 0,
        };
        let encoder = Encoder::start()?;
        let outcome = match self.0.store.export_reader().await {
            Ok(mut reader) => {
                let outcome = self
                    .write_rows(
                        reader.as_mut(),
                        &encoder,
                        &mut files,
                        progress,
                        context,
                        lost,
                    )
                    .await;
                reader.close().await;
                outcome
            }
            Err(err) => Err(read_error(&err)),
        };
        if let Err(error) = outcome {
            drop(encoder);
            files.completions.abort().await;
            files.responses.abort().await;
            return Err(error);
        }
        set_stage(progress, "uploading", "finishing the files");
        let written = async {
            let footers = encoder.ask(EncodeRequest::Finish).await?;
            files.append(footers).await?;
            files.completions.finish().await?;
            files.responses.finish().await
        };
        if let Err(err) = written.await {
            return Err(self.location_error(&err));
        }
        progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .parquet_bytes = files.bytes();
        let (completions, responses) = (&files.completions, &files.responses);
        let location = self.location();
        let url = |file: &FileUpload| match &self.0.location {
            ExportLocation::Local(dir) => dir.join(file.path.as_ref()).display().to_string(),
            ExportLocation::S3 { bucket, .. } => format!("s3://{bucket}/{}", file.path),
        };
        Ok(JobFiles {
            output_path: location,
            completions_file: url(completions),
            responses_file: url(responses),
        })
    }

    /// Reads the pages up to the highest `seq` now and writes them.
    async fn write_rows(
        &self,
        reader: &mut dyn ExportReader,
        encoder: &Encoder,
        files: &mut Files,
        progress: &Mutex<JobProgress>,
        context: &WorkerContext,
        lost: &std::sync::atomic::AtomicBool,
    ) -> Result<(), String> {
        let upto = reader.max_seq().await.map_err(|err| read_error(&err))?;
        let mut after = 0;
        loop {
            if context.is_stopping() {
                return Err(INTERRUPTED.to_owned());
            }
            if lost.load(std::sync::atomic::Ordering::Relaxed) {
                return Err("another replica judged this export dead".to_owned());
            }
            let page_started = Instant::now();
            let rows = reader
                .rows(after, upto, self.0.batch_rows)
                .await
                .map_err(|err| read_error(&err))?;
            let Some(final_row) = rows.last() else {
                return Ok(());
            };
            after = final_row.seq;
            let c_len = rows.iter().filter(|row| row.kind == "completions").count();
            let r_len = rows.len() - c_len;
            let written = async {
                let page = encoder.ask(EncodeRequest::Rows(rows)).await?;
                files.append(page).await
            };
            written.await.map_err(|err| self.location_error(&err))?;
            {
                let mut now = progress.lock().unwrap_or_else(PoisonError::into_inner);
                now.completion_count += i64::try_from(c_len).unwrap_or(i64::MAX);
                now.response_count += i64::try_from(r_len).unwrap_or(i64::MAX);
                now.parquet_bytes = files.bytes();
                now.message = format!(
                    "exported {} entries",
                    now.completion_count + now.response_count
                );
            }
            // A background job: it rests as long as each page took, so that
            // it takes at most about half of a core (and of the database's
            // time) from API traffic.
            tokio::time::sleep(page_started.elapsed()).await;
        }
    }
}

/// An export's error for a failed read of the entries.
fn read_error(err: &crate::store::StoreError) -> String {
    format!("cannot read the entries: {err}")
}

/// Lowers the calling thread's CPU priority to nice value `nice` (on Linux
/// the nice value is a thread's own, and threads it starts inherit it: the
/// encoder, the blocking pool's, SQLite's connection worker). Elsewhere,
/// where it would apply to the whole process, it does nothing.
fn lower_priority(nice: u8) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        let thread = rustix::thread::gettid();
        if let Err(err) = rustix::process::setpriority_process(Some(thread), i32::from(nice)) {
            tracing::warn!(error = %err, nice, "cannot lower the export's CPU priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// The heartbeat loop never ends; `select!` needs a value for its arm.
fn unreachable_heartbeat() -> Result<JobFiles, String> {
    Err("the heartbeat stopped".to_owned())
}

fn set_stage(progress: &Mutex<JobProgress>, stage: &str, message: &str) {
    let mut now = progress.lock().unwrap_or_else(PoisonError::into_inner);
    stage.clone_into(&mut now.stage);
    message.clone_into(&mut now.message);
}

fn failed_progress(progress: &JobProgress) -> JobProgress {
    JobProgress {
        stage: "failed".to_owned(),
        message: "export failed".to_owned(),
        ..progress.clone()
    }
}

fn child(base: &ObjectPath, name: &str) -> ObjectPath {
    if base.as_ref().is_empty() {
        ObjectPath::from(name)
    } else {
        base.clone().join(name)
    }
}

/// Both files' Parquet encoders, on one thread of their own for the whole
/// export: pages of entries go in, the encoded bytes of each file come
/// back (a bounded channel, one page at a time). Encoding (CPU work) never
/// blocks the export's own runtime, so the upload of the previous part goes
/// on meanwhile, and every buffer the encoding allocates and frees (batches,
/// the row groups being built, their output) stays on that one thread,
/// whose allocator heap reuses them page after page. Started from the
/// export's thread, it runs at its nice value.
struct Encoder {
    requests: Option<mpsc::Sender<(EncodeRequest, EncodeReply)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the encoder thread is asked to do.
enum EncodeRequest {
    /// Encode these entries (both kinds) into their files.
    Rows(Vec<ExportRow>),
    /// Write the files' last row groups and footers.
    Finish,
}

type EncodeReply = tokio::sync::oneshot::Sender<ParquetResult<Encoded>>;

/// What one request encoded: the bytes that follow in each file.
#[derive(Default)]
struct Encoded {
    completions: Vec<u8>,
    responses: Vec<u8>,
    /// Bytes held in both files' unfinished row groups.
    buffered: usize,
}

type ParquetResult<T> = Result<T, parquet::errors::ParquetError>;

fn encoder_gone() -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::General("the encoding thread stopped".to_owned())
}

impl Encoder {
    fn start() -> Result<Self, String> {
        let mut properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES));
        // Columns of (nearly) unique values gain nothing from a dictionary;
        // building one per row group and falling back costs memory and time.
        for column in UNIQUE_COLUMNS {
            properties = properties.set_column_dictionary_enabled(ColumnPath::from(column), false);
        }
        let properties = properties.build();
        let schema = schema();
        let file = || {
            ArrowWriter::try_new(Vec::new(), Arc::clone(&schema), Some(properties.clone()))
                .map_err(|err| format!("cannot start a Parquet file: {err}"))
        };
        let files = (file()?, file()?);
        let (requests, inbox) = mpsc::channel(1);
        let thread = std::thread::Builder::new()
            .name("export-encoder".to_owned())
            .spawn(move || encode(&schema, files, inbox))
            .map_err(|err| format!("cannot start the export's encoding thread: {err}"))?;
        Ok(Self {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    async fn ask(&self, request: EncodeRequest) -> ParquetResult<Encoded> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let requests = self.requests.as_ref().ok_or_else(encoder_gone)?;
        requests
            .send((request, reply))
            .await
            .map_err(|_| encoder_gone())?;
        answer.await.map_err(|_| encoder_gone())?
    }
}

impl Drop for Encoder {
    /// Ends the thread (its channel closes) without waiting for it: it
    /// stops after the page it is encoding, if any.
    fn drop(&mut self) {
        self.requests = None;
        drop(self.thread.take());
    }
}

/// The encoder thread: serves requests until the channel closes.
fn encode(
    schema: &SchemaRef,
    files: (ArrowWriter<Vec<u8>>, ArrowWriter<Vec<u8>>),
    mut inbox: mpsc::Receiver<(EncodeRequest, EncodeReply)>,
) {
    let mut files = Some(files);
    while let Some((request, reply)) = inbox.blocking_recv() {
        let encoded = match (request, files.as_mut()) {
            (EncodeRequest::Rows(rows), Some((completions, responses))) => {
                encode_rows(schema, &rows, "completions", completions).and_then(|c| {
                    let r = encode_rows(schema, &rows, "responses", responses)?;
                    Ok(Encoded {
                        completions: c,
                        responses: r,
                        buffered: completions.in_progress_size() + responses.in_progress_size(),
                    })
                })
            }
            (EncodeRequest::Finish, Some(_)) => files.take().map_or_else(
                || Err(encoder_gone()),
                |(completions, responses)| finish_files(completions, responses),
            ),
            (_, None) => Err(encoder_gone()),
        };
        if reply.send(encoded).is_err() {
            return;
        }
    }
}

/// Writes both files' last row groups and footers; their last bytes.
fn finish_files(
    completions: ArrowWriter<Vec<u8>>,
    responses: ArrowWriter<Vec<u8>>,
) -> ParquetResult<Encoded> {
    Ok(Encoded {
        completions: completions.into_inner()?,
        responses: responses.into_inner()?,
        buffered: 0,
    })
}

/// Encodes the entries of `kind` among `rows`; the bytes the file grew by.
fn encode_rows(
    schema: &SchemaRef,
    rows: &[ExportRow],
    kind: &str,
    file: &mut ArrowWriter<Vec<u8>>,
) -> ParquetResult<Vec<u8>> {
    let batch = record_batch(schema, rows, kind)?;
    file.write(&batch)?;
    // Taking what the writer wrote so far only moves bytes out of its sink;
    // its offsets count what went in.
    Ok(std::mem::take(file.inner_mut()))
}

/// Both files' uploads, and what the encoder still holds of them.
struct Files {
    completions: FileUpload,
    responses: FileUpload,
    buffered: usize,
}

impl Files {
    /// Appends what the encoder wrote to each file.
    async fn append(&mut self, encoded: Encoded) -> ParquetResult<()> {
        self.buffered = encoded.buffered;
        self.completions.write(encoded.completions).await?;
        self.responses.write(encoded.responses).await
    }

    /// Bytes written so far, both files (those uploaded and those in the
    /// row groups being built).
    fn bytes(&self) -> i64 {
        self.completions.uploaded
            + self.responses.uploaded
            + i64::try_from(self.buffered).unwrap_or(i64::MAX)
    }
}

/// One Parquet file's upload to the object store: the encoder's bytes, in
/// order, through object_store's buffered multipart writer.
struct FileUpload {
    path: ObjectPath,
    upload: BufWriter,
    /// Bytes handed to the upload so far.
    uploaded: i64,
}

impl FileUpload {
    fn new(store: &Arc<dyn ObjectStore>, path: ObjectPath) -> Self {
        let upload = BufWriter::with_capacity(Arc::clone(store), path.clone(), UPLOAD_PART_BYTES)
            .with_max_concurrency(UPLOADS_IN_FLIGHT);
        Self {
            path,
            upload,
            uploaded: 0,
        }
    }

    async fn write(&mut self, bytes: Vec<u8>) -> ParquetResult<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.uploaded += i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        // Copied into the writer's own part buffer (written in blocks), so
        // the encoder's buffer is freed now, whatever its spare capacity.
        self.upload.write(bytes::Bytes::from(bytes)).await
    }

    async fn finish(&mut self) -> ParquetResult<()> {
        self.upload.complete().await
    }

    /// Drops what was written (an incomplete multipart upload is aborted).
    async fn abort(&mut self) {
        let _ = self.upload.abort().await;
    }
}

/// The entries of `kind` among `rows` as one batch of [`schema`].
fn record_batch(schema: &SchemaRef, rows: &[ExportRow], kind: &str) -> ParquetResult<RecordBatch> {
    let rows = || rows.iter().filter(|row| row.kind == kind);
    let count = rows().count();
    let text = |value: fn(&ExportRow) -> Option<&str>| -> ArrayRef {
        let mut builder = StringBuilder::with_capacity(count, count * 16);
        for row in rows() {
            builder.append_option(value(row));
        }
        Arc::new(builder.finish())
    };
    let time = |value: fn(&ExportRow) -> DateTime<Utc>| -> ArrayRef {
        let mut builder = TimestampMillisecondBuilder::with_capacity(count).with_timezone("UTC");
        for row in rows() {
            builder.append_value(value(row).timestamp_millis());
        }
        Arc::new(builder.finish())
    };
    let columns = vec![
        text(|row| Some(row.tenant.as_str())),
        text(|row| Some(row.id.as_str())),
        text(|row| row.model.as_deref()),
        text(|row| row.rating.as_deref()),
        text(|row| row.description.as_deref()),
        text(|row| row.end_user.as_deref()),
        time(|row| row.created_at),
        time(|row| row.updated_at),
    ];
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}
