//! MKA1's admin export (API.md, "admin export (MKA1)"): admin keys' rights,
//! one export at a time, status transitions, a dead replica's and a stopped
//! replica's export, and the Parquet files read back row for row.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray as _;
use arrow_array::types::TimestampMillisecondType;
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use llm_feedback::config::ExportLocation;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, Reply, TestApp, TestStorage, spawn_app_on, spawn_app_on_with, spawn_app_with,
    test_database_args, timestamp,
};

both_stores!(
    keys_create_admin_makes_a_key_of_no_tenant_that_lists_and_revokes,
    only_admin_keys_reach_the_admin_export_and_admin_keys_reach_nothing_else,
    an_export_writes_every_tenants_entries_to_two_parquet_files_row_for_row,
    one_export_runs_at_a_time_and_a_dead_replicas_export_is_reported_failed,
);
per_store!(
    shutdown_mid_export_reports_it_failed_interrupted,
    the_export_runs_on_threads_of_its_own_at_the_configured_nice_value,
    an_export_that_outlives_its_application_ends_without_aborting_the_process,
    an_unwritable_location_fails_the_export_naming_it_and_the_api_keeps_serving,
);

#[tokio::test]
async fn a_bad_export_location_scheme_stops_start_up_with_one_clear_line() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut command = crate::cli::llm_feedback();
    command
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("f.db").display()),
        )
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("EXPORT_LOCATION", "gs://bucket/prefix");
    let finished = crate::cli::run(command, Duration::from_secs(30)).await;
    assert!(!finished.status.success(), "{finished:?}");
    let errors: Vec<&str> = finished
        .stderr_lines()
        .into_iter()
        .filter(|line| line.starts_with("error"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", finished.stderr);
    assert!(
        errors[0].contains("EXPORT_LOCATION") && errors[0].contains("\"gs\""),
        "{}",
        errors[0]
    );
    assert!(
        !dir.path().join("f.db").exists(),
        "it should stop before opening the database"
    );
}

const START: &str = "/api/v1/llm/feedback/export";
const STATUS: &str = "/api/v1/llm/feedback/export/status";

async fn status(app: &TestApp, admin: &str) -> Value {
    let reply = app.send_as(admin, Method::GET, STATUS, None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body
}

/// Polls the status until it is no longer `RUNNING`.
async fn wait_closed(app: &TestApp, admin: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let body = status(app, admin).await;
        if body["status"] != "RUNNING" {
            return body;
        }
        assert!(started.elapsed() < within, "still running: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn only_admin_keys_reach_the_admin_export_and_admin_keys_reach_nothing_else(app: TestApp) {
    let admin = app.new_admin_key().await;
    // A tenant key, and a token minted by one, get 403 on both admin operations.
    let token = app
        .send(
            app.request(Method::POST, "/api/v1/llm/feedback/tokens")
                .json(&json!({"kind": "responses", "id": "resp-1"})),
        )
        .await;
    assert_eq!(token.status, 201, "{}", token.text);
    let token = token.body["token"].as_str().expect("token").to_owned();
    for key in [&app.api_key, &token] {
        for (method, path) in [(Method::POST, START), (Method::GET, STATUS)] {
            let reply = app.send_as(key, method, path, None).await;
            assert_eq!(reply.status, 403, "{path}: {}", reply.text);
            assert_eq!(reply.error_code(), "forbidden");
        }
    }
    // Without a key: 401.
    let reply = app.send(app.client.get(app.url(STATUS))).await;
    assert_eq!(reply.status, 401);
    // The admin key reaches no tenant operation.
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/llm/feedback/responses",
            Some(json!({"id": "r"})),
        ),
        (Method::GET, "/api/v1/llm/feedback/responses", None),
        (Method::GET, "/api/v1/llm/feedback/responses/r", None),
        (
            Method::PUT,
            "/api/v1/llm/feedback/responses/r",
            Some(json!({})),
        ),
        (
            Method::POST,
            "/api/v1/llm/feedback/responses/batch",
            Some(json!({"ids": ["r"]})),
        ),
        (Method::GET, "/api/v1/llm/feedback/export/completions", None),
        (Method::GET, "/api/v1/llm/feedback/export/responses", None),
        (
            Method::POST,
            "/api/v1/llm/feedback/tokens",
            Some(json!({"kind": "responses", "id": "r"})),
        ),
    ] {
        let reply = app
            .send_as(&admin, method.clone(), path, body.as_ref())
            .await;
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.text);
        assert_eq!(reply.error_code(), "forbidden");
    }
    // `status` is the admin route; the CSV exports still answer tenant keys.
    let csv = app.export("completions", "").await;
    assert_eq!(csv.status, 200, "{}", csv.text);
    assert!(csv.text.starts_with("id,model,rating"), "{}", csv.text);
    // An admin key acts for no end user.
    let reply = app
        .send(
            app.client
                .get(app.url(STATUS))
                .bearer_auth(&admin)
                .header("X-On-Behalf-Of", "u-1"),
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.text);
    // And it may call both.
    assert_eq!(status(&app, &admin).await, json!({"status": "NOT_FOUND"}));
    let started = app.send_as(&admin, Method::POST, START, None).await;
    assert_eq!(started.status, 202, "{}", started.text);
}

async fn keys_create_admin_makes_a_key_of_no_tenant_that_lists_and_revokes(app: TestApp) {
    use crate::cli::{list_keys_json, llm_feedback_on, run};
    let mut command = llm_feedback_on(&app.database_url);
    command.args(["keys", "create", "--admin", "--name", "warehouse"]);
    let finished = run(command, Duration::from_secs(30)).await;
    finished.assert_success();
    let secret = finished.stdout.trim_end().to_owned();
    assert!(secret.starts_with("lfk_"), "{finished:?}");
    assert_eq!(finished.stdout, format!("{secret}\n"));
    assert!(finished.stderr.contains("admin"), "{finished:?}");
    // Admin and tenant at once, or neither: refused.
    for args in [&["--admin", "--tenant", "t"][..], &[][..]] {
        let mut command = llm_feedback_on(&app.database_url);
        command.args(["keys", "create"]).args(args);
        let finished = run(command, Duration::from_secs(30)).await;
        assert!(!finished.status.success(), "{args:?}: {finished:?}");
    }
    let id = TestApp::key_id(&secret);
    let keys = list_keys_json(&app.database_url, &[]).await;
    let ours = keys
        .iter()
        .find(|key| key["id"] == id.as_str())
        .unwrap_or_else(|| panic!("the admin key is not listed: {keys:?}"));
    assert_eq!(ours["tenant"], Value::Null, "{ours}");
    assert_eq!(ours["name"], "warehouse", "{ours}");
    // No tenant's listing holds it.
    let of_a = list_keys_json(&app.database_url, &["--tenant", "tenant-a"]).await;
    assert!(of_a.iter().all(|key| key["id"] != id.as_str()), "{of_a:?}");
    // The table names it an admin key.
    let mut command = llm_feedback_on(&app.database_url);
    command.args(["keys", "list"]);
    let table = run(command, Duration::from_secs(30)).await;
    let row = table
        .stdout
        .lines()
        .find(|line| line.contains(&id))
        .unwrap_or_default();
    assert!(row.contains("(admin)"), "{}", table.stdout);
    // It works at once (looked up), then is revoked like any key.
    assert_eq!(status(&app, &secret).await, json!({"status": "NOT_FOUND"}));
    let mut command = llm_feedback_on(&app.database_url);
    command.args(["keys", "revoke", &id]);
    run(command, Duration::from_secs(30)).await.assert_success();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.send_as(&secret, Method::GET, STATUS, None).await.status != 401 {
        assert!(
            Instant::now() < deadline,
            "the revoked admin key still works"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One Parquet row, as the test compares it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    tenant: String,
    id: String,
    model: Option<String>,
    rating: Option<String>,
    description: Option<String>,
    end_user: Option<String>,
    created_at: i64,
    updated_at: i64,
}

/// Every row of a Parquet file, read with the `parquet` crate's reader;
/// checks the schema on the way (UTC timestamp columns, nullable text).
fn read_parquet(path: &str) -> Vec<Row> {
    let file = std::fs::File::open(path).unwrap_or_else(|err| panic!("open {path}: {err}"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("a Parquet file")
        .build()
        .expect("a reader");
    let mut rows = Vec::new();
    for batch in reader {
        let batch: RecordBatch = batch.expect("a record batch");
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "tenant",
                "id",
                "model",
                "rating",
                "description",
                "end_user",
                "created_at",
                "updated_at"
            ]
        );
        for name in ["created_at", "updated_at"] {
            assert_eq!(
                schema.field_with_name(name).expect("column").data_type(),
                &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
            );
        }
        let text = |i: usize, row: usize| {
            let column = batch.column(i).as_string::<i32>();
            (!column.is_null(row)).then(|| column.value(row).to_owned())
        };
        let time = |i: usize, row: usize| {
            batch
                .column(i)
                .as_primitive::<TimestampMillisecondType>()
                .value(row)
        };
        for row in 0..batch.num_rows() {
            rows.push(Row {
                tenant: text(0, row).expect("tenant is never null"),
                id: text(1, row).expect("id is never null"),
                model: text(2, row),
                rating: text(3, row),
                description: text(4, row),
                end_user: text(5, row),
                created_at: time(6, row),
                updated_at: time(7, row),
            });
        }
    }
    rows
}

/// The row an entry (as `GET` answers it) should be exported as.
fn expected_row(tenant: &str, entry: &Value, end_user: Option<&str>) -> Row {
    let text = |key: &str| entry[key].as_str().map(str::to_owned);
    Row {
        tenant: tenant.to_owned(),
        id: text("id").expect("id"),
        model: text("model"),
        rating: text("rating"),
        description: text("description"),
        end_user: end_user.map(str::to_owned),
        created_at: timestamp(&entry["createdAt"]).timestamp_millis(),
        updated_at: timestamp(&entry["updatedAt"]).timestamp_millis(),
    }
}

/// Entries of both kinds in two tenants, every field set or unset, with an
/// end user or none, one of them updated: the rows each file should hold.
async fn seed_entries(app: &TestApp) -> BTreeMap<&'static str, Vec<Row>> {
    let tenant_b = app.new_key("tenant-b").await;
    let mut expected: BTreeMap<&str, Vec<Row>> = BTreeMap::new();
    // Both kinds, two tenants, every field set or unset, an end user or none.
    let cases = [
        (
            "tenant-a",
            &app.api_key,
            "completions",
            json!({"id": "c-1", "rating": "thumbs_up", "model": "gpt-4o", "description": "ok, \"fine\"\nyes"}),
            None,
        ),
        (
            "tenant-a",
            &app.api_key,
            "completions",
            json!({"id": "c-2"}),
            Some("user-7"),
        ),
        (
            "tenant-b",
            &tenant_b,
            "completions",
            json!({"id": "c-1", "rating": "thumbs_down", "description": ""}),
            None,
        ),
        (
            "tenant-a",
            &app.api_key,
            "responses",
            json!({"id": "r-1", "description": "émoji 👍"}),
            None,
        ),
        (
            "tenant-b",
            &tenant_b,
            "responses",
            json!({"id": "r-2", "model": "m", "rating": "thumbs_up"}),
            Some("u"),
        ),
    ];
    for (tenant, key, kind, body, end_user) in cases {
        let caller = app.as_caller(key, end_user);
        let created = caller.create_ok(kind, body).await;
        let id = created["id"].as_str().expect("id").to_owned();
        let entry = caller.get(kind, &id).await.body;
        expected
            .entry(kind)
            .or_default()
            .push(expected_row(tenant, &entry, end_user));
    }
    // An update shows in the export.
    let updated = app
        .update_ok("completions", "c-2", json!({"rating": "thumbs_down"}))
        .await;
    let rows = expected.get_mut("completions").expect("completions");
    rows[1].rating = Some("thumbs_down".to_owned());
    rows[1].updated_at = timestamp(&updated["updatedAt"]).timestamp_millis();
    expected
}

async fn an_export_writes_every_tenants_entries_to_two_parquet_files_row_for_row(app: TestApp) {
    let admin = app.new_admin_key().await;
    let expected = seed_entries(&app).await;
    assert_eq!(status(&app, &admin).await, json!({"status": "NOT_FOUND"}));
    let started = app.send_as(&admin, Method::POST, START, None).await;
    assert_eq!(started.status, 202, "{}", started.text);
    assert_eq!(started.body["started"], true, "{}", started.text);
    assert_eq!(started.body["status"], "RUNNING", "{}", started.text);
    assert!(
        started.body["progress"]["stage"].is_string(),
        "{}",
        started.text
    );
    assert!(
        started.body["progress"]["message"].is_string(),
        "{}",
        started.text
    );

    let done = wait_closed(&app, &admin, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert!(done.get("error").is_none(), "{done}");
    let result = &done["result"];
    assert_eq!(result["record_count"], 5, "{done}");
    assert_eq!(result["completion_feedback_count"], 3, "{done}");
    assert_eq!(result["response_feedback_count"], 2, "{done}");
    assert!(result["duration_ms"].is_i64(), "{done}");
    assert_eq!(result["exported_at"], done["close_time"], "{done}");
    assert!(
        timestamp(&done["start_time"]) <= timestamp(&done["close_time"]),
        "{done}"
    );
    assert_eq!(done["progress"]["stage"], "completed", "{done}");
    assert_eq!(done["progress"]["record_count"], 5, "{done}");
    assert!(
        done["progress"]["parquet_bytes"].as_i64().unwrap_or(0) > 0,
        "{done}"
    );
    let mut keys: Vec<&str> = result
        .as_object()
        .expect("result")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "completion_feedback_count",
            "completions_file",
            "duration_ms",
            "exported_at",
            "output_path",
            "record_count",
            "response_feedback_count",
            "responses_file"
        ]
    );
    for (kind, field) in [
        ("completions", "completions_file"),
        ("responses", "responses_file"),
    ] {
        let path = result[field].as_str().expect("a file path");
        assert!(
            path.starts_with(result["output_path"].as_str().expect("output_path")),
            "{done}"
        );
        assert!(path.contains(kind) && path.ends_with(".parquet"), "{path}");
        let mut rows = read_parquet(path);
        let mut want = expected[kind].clone();
        rows.sort();
        want.sort();
        assert_eq!(rows, want, "{kind}");
    }
    // A second export writes new files; the first stay.
    let again = app.send_as(&admin, Method::POST, START, None).await;
    assert_eq!(again.body["started"], true, "{}", again.text);
    let second = wait_closed(&app, &admin, Duration::from_secs(30)).await;
    assert_eq!(second["status"], "COMPLETED", "{second}");
    assert_ne!(
        second["result"]["completions_file"],
        result["completions_file"]
    );
    assert!(std::path::Path::new(result["completions_file"].as_str().unwrap_or_default()).exists());
}

async fn one_export_runs_at_a_time_and_a_dead_replicas_export_is_reported_failed(app: TestApp) {
    let admin = app.new_admin_key().await;
    // Another replica started an export and died: its row stays RUNNING with
    // a heartbeat that is no longer refreshed.
    let now = chrono::Utc::now();
    let dead = app
        .store
        .start_export_job(
            "dead-job",
            "dead-replica",
            now,
            now - chrono::Duration::seconds(60),
        )
        .await
        .expect("insert the dead replica's job");
    assert!(
        matches!(dead, llm_feedback::store::JobStart::Started(_)),
        "{dead:?}"
    );
    // While it counts as running, nothing else starts, on any replica.
    let refused = app.send_as(&admin, Method::POST, START, None).await;
    assert_eq!(refused.status, 202, "{}", refused.text);
    assert_eq!(refused.body["started"], false, "{}", refused.text);
    assert_eq!(refused.body["status"], "RUNNING", "{}", refused.text);
    assert_eq!(status(&app, &admin).await["status"], "RUNNING");
    // Past the lease (1 s in tests) it is FAILED, with an error.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failed = status(&app, &admin).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("heartbeat"),
        "{failed}"
    );
    assert!(failed.get("close_time").is_some(), "{failed}");
    assert!(failed.get("result").is_none(), "{failed}");
    // Now one starts; concurrent starts from several callers start one.
    let starts =
        futures::future::join_all((0..4).map(|_| app.send_as(&admin, Method::POST, START, None)))
            .await;
    let started: Vec<&Reply> = starts
        .iter()
        .filter(|r| r.body["started"] == true)
        .collect();
    assert!(starts.iter().all(|r| r.status == 202), "{starts:?}");
    // One started; the others saw it running, or started after it ended.
    assert!(!started.is_empty(), "{starts:?}");
    let done = wait_closed(&app, &admin, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
}

async fn shutdown_mid_export_reports_it_failed_interrupted(backend: Backend) {
    let storage = TestStorage::new(backend).await;
    let database = test_database_args(&storage.url());
    // One row per query: thousands of queries, so that the export is still
    // running when the replica is told to stop.
    let first = spawn_app_on_with(&database, |serve| serve.export.export_batch_rows = 1).await;
    first.insert_completions_directly("bulk", 20_000).await;
    let admin = first.new_admin_key().await;
    let started = first.send_as(&admin, Method::POST, START, None).await;
    assert_eq!(started.body["started"], true, "{}", started.text);
    let running = status(&first, &admin).await;
    assert_eq!(running["status"], "RUNNING", "{running}");
    drop(first);
    // Another replica on the same database sees it closed by the stop.
    let second = spawn_app_on(&database).await;
    let closed = wait_closed(&second, &admin, Duration::from_secs(20)).await;
    assert_eq!(closed["status"], "FAILED", "{closed}");
    assert!(
        closed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted by shutdown"),
        "{closed}"
    );
    drop(second);
    drop(storage);
}

/// This process's threads as (name, nice value), from `/proc/self/task`.
fn threads_and_nice_values() -> Vec<(String, i64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .filter_map(|stat| {
            // "tid (name) state ppid ...": the name may hold spaces; the
            // nice value is field 19, the 17th after the name.
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_owned();
            let nice = rest.split_whitespace().nth(16)?.parse().ok()?;
            Some((name, nice))
        })
        .collect()
}

/// Whether one of `seen` is a thread whose name starts with `name` (Linux
/// keeps 15 characters of it) running at nice value `nice`.
fn runs_at(seen: &[(String, i64)], name: &str, nice: i64) -> bool {
    seen.iter()
        .any(|(n, value)| n.starts_with(name) && *value == nice)
}

async fn the_export_runs_on_threads_of_its_own_at_the_configured_nice_value(backend: Backend) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let storage = TestStorage::new(backend).await;
    let database = test_database_args(&storage.url());
    let app = spawn_app_on_with(&database, |serve| {
        serve.export.export_batch_rows = 1;
        serve.export.export_nice = 17;
    })
    .await;
    app.insert_completions_directly("bulk", 5_000).await;
    let admin = app.new_admin_key().await;
    let started = app.send_as(&admin, Method::POST, START, None).await;
    assert_eq!(started.body["started"], true, "{}", started.text);
    // Other tests in this process may run exports of their own (at 19).
    let at_17 = |seen: &[(String, i64)], name: &str| runs_at(seen, name, 17);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        seen = threads_and_nice_values();
        if at_17(&seen, "admin-export")
            && at_17(&seen, "export-encoder")
            && (backend == Backend::Postgres || at_17(&seen, "sqlx-sqlite-wor"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        at_17(&seen, "admin-export"),
        "no admin-export thread at nice 17 while the export ran: {seen:?}"
    );
    assert!(
        at_17(&seen, "export-encoder"),
        "the encoder does not inherit the nice value: {seen:?}"
    );
    if backend == Backend::Sqlite {
        assert!(
            at_17(&seen, "sqlx-sqlite-wor"),
            "the export's SQLite connection worker does not inherit it: {seen:?}"
        );
    }
    // The API's threads (the runtime's workers) keep theirs.
    let api = seen.iter().filter(|(n, _)| n == "tokio-rt-worker");
    assert!(api.clone().count() >= 2, "{seen:?}");
    assert!(api.clone().all(|(_, nice)| *nice == 0), "{seen:?}");
    let closed = wait_closed(&app, &admin, Duration::from_secs(120)).await;
    assert_eq!(closed["status"], "COMPLETED", "{closed}");
    assert_eq!(closed["result"]["record_count"], 5_000, "{closed}");
    drop(app);
    drop(storage);
}

/// The application (its runtime, its workers, its store) goes away while
/// the export's own thread still runs: that thread then holds the last
/// reference to the store, whose pool and listener must be dropped inside a
/// runtime. Dropped outside one, sqlx panics in a destructor and the whole
/// process aborts (as CI once saw after a shutdown mid-export).
async fn an_export_that_outlives_its_application_ends_without_aborting_the_process(
    backend: Backend,
) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let storage = TestStorage::new(backend).await;
    let database = test_database_args(&storage.url());
    // Its own nice value tells its thread apart from other tests' exports.
    let nice: u8 = if backend == Backend::Postgres { 16 } else { 15 };
    let ours_runs = move || runs_at(&threads_and_nice_values(), "admin-export", i64::from(nice));
    // The application on a runtime of its own, shut down under the export.
    let seen_running = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let app = runtime.block_on(async {
            let app = spawn_app_on_with(&database, |serve| {
                serve.export.export_batch_rows = 1;
                serve.export.export_nice = nice;
            })
            .await;
            app.insert_completions_directly("bulk", 3_000).await;
            let admin = app.new_admin_key().await;
            let started = app.send_as(&admin, Method::POST, START, None).await;
            assert_eq!(started.body["started"], true, "{}", started.text);
            app
        });
        // The worker starts the export's thread after the answer.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut running = ours_runs();
        while !running && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            running = ours_runs();
        }
        // Every task (server, workers) is dropped, not stopped: the export's
        // thread is not told to stop and goes on to its end.
        runtime.shutdown_background();
        // Dropped here, on a thread of the test's runtime: the export's
        // thread now holds the last reference to the store.
        drop(app);
        running
    })
    .await
    .expect("the application's thread");
    assert!(
        seen_running,
        "no export thread was seen running before the application ended"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while ours_runs() {
        assert!(
            Instant::now() < deadline,
            "the export's thread still runs 120 s after its application ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // This process is still here to say so.
    drop(storage);
}

async fn an_unwritable_location_fails_the_export_naming_it_and_the_api_keeps_serving(
    backend: Backend,
) {
    // A directory cannot be created under a regular file.
    let file = tempfile::NamedTempFile::new().expect("a temp file");
    let location = file.path().join("exports");
    let app = spawn_app_with(backend, |serve| {
        serve.export.export_location = ExportLocation::Local(location.clone());
    })
    .await;
    let admin = app.new_admin_key().await;
    app.create_ok("responses", json!({"id": "r-1"})).await;
    let started = app.send_as(&admin, Method::POST, START, None).await;
    assert_eq!(started.body["started"], true, "{}", started.text);
    let failed = wait_closed(&app, &admin, Duration::from_secs(30)).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains(&location.display().to_string()), "{error}");
    assert_eq!(failed["progress"]["stage"], "failed", "{failed}");
    // The API keeps serving.
    app.create_ok("responses", json!({"id": "r-2"})).await;
    assert_eq!(app.get("responses", "r-1").await.status, 200);
}
