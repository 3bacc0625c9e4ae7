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
//! export started) and written a page at a time into row groups of
//! [`ROW_GROUP_ROWS`] rows by parquet's `ArrowWriter` on tokio's blocking
//! pool, and handed to object_store's buffered multipart writer: memory
//! does not grow with the number of entries.

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
use tokio::sync::mpsc;

use crate::config::{ExportArgs, ExportLocation};
use crate::store::{ExportJob, ExportRow, JobEnd, JobFiles, JobProgress, JobStart, Store};
use crate::worker::{WorkerContext, WorkerResult};

/// Rows per Parquet row group: what one file holds in memory at most,
/// encoded, before it goes to the object store.
pub const ROW_GROUP_ROWS: usize = 16_384;
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
        let work = self.write(&job, &progress, context, &abandoned);
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

    /// Writes both files; the error names the location, never credentials.
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
        let mut completions = FileWriter::new(&store, child(&base, &name("completions")))?;
        let mut responses = FileWriter::new(&store, child(&base, &name("responses")))?;
        let outcome = self
            .write_rows(&mut completions, &mut responses, progress, context, lost)
            .await;
        if let Err(error) = outcome {
            completions.abort().await;
            responses.abort().await;
            return Err(error);
        }
        set_stage(progress, "uploading", "finishing the files");
        let written = async {
            completions.finish().await?;
            responses.finish().await
        };
        if let Err(err) = written.await {
            return Err(self.location_error(&err));
        }
        progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .parquet_bytes = completions.bytes() + responses.bytes();
        let location = self.location();
        let url = |file: &FileWriter| match &self.0.location {
            ExportLocation::Local(dir) => dir.join(file.path.as_ref()).display().to_string(),
            ExportLocation::S3 { bucket, .. } => format!("s3://{bucket}/{}", file.path),
        };
        Ok(JobFiles {
            output_path: location,
            completions_file: url(&completions),
            responses_file: url(&responses),
        })
    }

    async fn write_rows(
        &self,
        completions: &mut FileWriter,
        responses: &mut FileWriter,
        progress: &Mutex<JobProgress>,
        context: &WorkerContext,
        lost: &std::sync::atomic::AtomicBool,
    ) -> Result<(), String> {
        let store_error = |err: crate::store::StoreError| format!("cannot read the entries: {err}");
        let upto = self.0.store.max_feedback_seq().await.map_err(store_error)?;
        let mut after = 0;
        loop {
            if context.is_stopping() {
                return Err(INTERRUPTED.to_owned());
            }
            if lost.load(std::sync::atomic::Ordering::Relaxed) {
                return Err("another replica judged this export dead".to_owned());
            }
            let page_started = Instant::now();
            let rows = self
                .0
                .store
                .export_rows(after, upto, self.0.batch_rows)
                .await
                .map_err(store_error)?;
            let Some(final_row) = rows.last() else {
                return Ok(());
            };
            after = final_row.seq;
            let (c, r): (Vec<ExportRow>, Vec<ExportRow>) =
                rows.into_iter().partition(|row| row.kind == "completions");
            let (c_len, r_len) = (c.len(), r.len());
            let written = async {
                completions.write(c).await?;
                responses.write(r).await
            };
            written.await.map_err(|err| self.location_error(&err))?;
            {
                let mut now = progress.lock().unwrap_or_else(PoisonError::into_inner);
                now.completion_count += i64::try_from(c_len).unwrap_or(i64::MAX);
                now.response_count += i64::try_from(r_len).unwrap_or(i64::MAX);
                now.parquet_bytes = completions.bytes() + responses.bytes();
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

/// One Parquet file being written to the object store. Encoding (CPU work)
/// runs on tokio's blocking pool, a page at a time, into an in-memory
/// buffer that is then handed to the object store's writer: API requests on
/// the runtime's threads never wait behind it.
struct FileWriter {
    path: ObjectPath,
    writer: Option<ArrowWriter<SharedBuffer>>,
    buffer: SharedBuffer,
    upload: BufWriter,
    schema: SchemaRef,
    /// Bytes handed to the upload so far.
    uploaded: i64,
}

/// What the sync Parquet writer writes into; drained after every page.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type ParquetResult<T> = Result<T, parquet::errors::ParquetError>;

fn join_error(err: &tokio::task::JoinError) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::General(format!("the encoding task failed: {err}"))
}

impl FileWriter {
    fn new(store: &Arc<dyn ObjectStore>, path: ObjectPath) -> Result<Self, String> {
        let upload = BufWriter::with_capacity(Arc::clone(store), path.clone(), UPLOAD_PART_BYTES)
            .with_max_concurrency(UPLOADS_IN_FLIGHT);
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let schema = schema();
        let buffer = SharedBuffer::default();
        let writer = ArrowWriter::try_new(buffer.clone(), Arc::clone(&schema), Some(properties))
            .map_err(|err| format!("cannot start a Parquet file: {err}"))?;
        Ok(Self {
            path,
            writer: Some(writer),
            buffer,
            upload,
            schema,
            uploaded: 0,
        })
    }

    fn bytes(&self) -> i64 {
        let pending = self
            .writer
            .as_ref()
            .map_or(0, ArrowWriter::in_progress_size);
        self.uploaded + i64::try_from(pending).unwrap_or(i64::MAX)
    }

    /// Hands what the encoder wrote so far to the upload.
    async fn drain(&mut self) -> ParquetResult<()> {
        let bytes =
            std::mem::take(&mut *self.buffer.0.lock().unwrap_or_else(PoisonError::into_inner));
        if bytes.is_empty() {
            return Ok(());
        }
        self.uploaded += i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        self.upload.write(bytes::Bytes::from(bytes)).await
    }

    async fn write(&mut self, rows: Vec<ExportRow>) -> ParquetResult<()> {
        let Some(mut writer) = self.writer.take() else {
            return Ok(());
        };
        if rows.is_empty() {
            self.writer = Some(writer);
            return Ok(());
        }
        let schema = Arc::clone(&self.schema);
        let (writer, encoded) = tokio::task::spawn_blocking(move || {
            let encoded = record_batch(&schema, &rows).and_then(|batch| writer.write(&batch));
            (writer, encoded)
        })
        .await
        .map_err(|err| join_error(&err))?;
        self.writer = Some(writer);
        encoded?;
        self.drain().await
    }

    async fn finish(&mut self) -> ParquetResult<()> {
        if let Some(writer) = self.writer.take() {
            tokio::task::spawn_blocking(move || writer.close())
                .await
                .map_err(|err| join_error(&err))??;
            self.drain().await?;
            self.upload.complete().await?;
        }
        Ok(())
    }

    /// Drops what was written (an incomplete multipart upload is aborted).
    async fn abort(&mut self) {
        self.writer = None;
        let _ = self.upload.abort().await;
    }
}

/// `rows` as one batch of [`schema`].
fn record_batch(schema: &SchemaRef, rows: &[ExportRow]) -> ParquetResult<RecordBatch> {
    let text = |value: fn(&ExportRow) -> Option<&str>| -> ArrayRef {
        let mut builder = StringBuilder::with_capacity(rows.len(), rows.len() * 16);
        for row in rows {
            builder.append_option(value(row));
        }
        Arc::new(builder.finish())
    };
    let time = |value: fn(&ExportRow) -> DateTime<Utc>| -> ArrayRef {
        let mut builder =
            TimestampMillisecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
        for row in rows {
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
