//! `GET /api/v1/llm/feedback/stats`: every figure against counts computed
//! here from the seeded entries.
//!
//! The API cannot set `createdAt`, so entries spread over days are written
//! straight into the database and the counters are then rebuilt by running
//! the counters migration itself again (which also tests its backfill);
//! entries written through the API afterwards test that each write keeps the
//! counters right in its own transaction.

#![allow(
    clippy::cast_precision_loss,
    clippy::format_push_string,
    clippy::type_complexity,
    clippy::too_many_lines,
    reason = "test code: counts of a few hundred entries, queries built up, long scenarios"
)]

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, Reply, TestApp, assert_invalid_fields};
use crate::safe_writes::{entry_path, send};

both_stores!(
    every_figure_matches_counts_computed_from_the_entries_for_each_grouping_and_range,
    the_model_filter_and_the_kind_count_only_their_entries,
    another_tenant_and_another_end_user_are_never_counted,
    every_acknowledged_write_is_in_the_next_answer_and_updates_move_buckets,
    deletes_erasures_and_retention_take_their_entries_out_of_the_counts,
    without_entries_one_group_of_zeros_and_nulls_or_no_groups,
    bad_stats_queries_are_400_with_details,
);

const MODELS: [Option<&str>; 3] = [Some("gpt-4o"), Some("claude-3"), None];

/// An entry as seeded.
#[derive(Debug, Clone)]
struct Seed {
    tenant: &'static str,
    kind: &'static str,
    id: String,
    model: Option<&'static str>,
    end_user: Option<&'static str>,
    rating: Option<&'static str>,
    description: Option<String>,
    created_at: DateTime<Utc>,
}

/// The first seeded day, 2024-03-01 (UTC).
fn day0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap()
}

/// 400 entries of tenant-a over five days (every hour of the day), three
/// models, mixed ratings and descriptions, some for end user `u1`; and a few
/// of tenant-b and of the other kind.
fn seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    for i in 0_i64..400 {
        let rating = match (i * 7) % 5 {
            0 | 1 => Some("thumbs_up"),
            2 => Some("thumbs_down"),
            _ => None,
        };
        seeds.push(Seed {
            tenant: if i % 37 == 0 { "tenant-b" } else { "tenant-a" },
            kind: if i % 11 == 0 {
                "responses"
            } else {
                "completions"
            },
            id: format!("seed-{i}"),
            // The model cycles faster than the day, so every pair occurs.
            model: MODELS[usize::try_from(i % 3).unwrap()],
            end_user: (i % 7 == 0).then_some("u1"),
            rating,
            description: (i % 4 == 0).then(|| format!("comment {i}")),
            created_at: day0()
                + Duration::days(i % 5)
                + Duration::minutes((i * 53) % 1440)
                + Duration::milliseconds(i % 1000),
        });
    }
    seeds
}

/// Writes the seeds straight into the database, then rebuilds the counters
/// with the counters migration.
async fn seed(app: &TestApp, seeds: &[Seed]) {
    match app.backend {
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
            for s in seeds {
                sqlx::query(
                    "insert into feedback (tenant, kind, output_id, end_user, rating, description, model, created_at, updated_at)
                     values ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
                )
                .bind(s.tenant)
                .bind(s.kind)
                .bind(&s.id)
                .bind(s.end_user)
                .bind(s.rating)
                .bind(s.description.as_deref())
                .bind(s.model)
                .bind(s.created_at)
                .execute(&pool)
                .await
                .unwrap();
            }
            sqlx::raw_sql("drop table feedback_counters")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::raw_sql(include_str!(
                "../../migrations/postgres/20261203000002_feedback_counters.sql"
            ))
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
            for s in seeds {
                sqlx::query(
                    "insert into feedback (tenant, kind, output_id, end_user, rating, description, model, created_at, updated_at)
                     values ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
                )
                .bind(s.tenant)
                .bind(s.kind)
                .bind(&s.id)
                .bind(s.end_user)
                .bind(s.rating)
                .bind(s.description.as_deref())
                .bind(s.model)
                .bind(s.created_at.timestamp_millis())
                .execute(&pool)
                .await
                .unwrap();
            }
            sqlx::raw_sql("drop table feedback_counters")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::raw_sql(include_str!(
                "../../migrations/sqlite/20261203000002_feedback_counters.sql"
            ))
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
    }
}

/// The counts of one group, computed here.
#[derive(Debug, Default, Clone, Copy)]
struct Expected {
    total: i64,
    up: i64,
    down: i64,
    unrated: i64,
    with_description: i64,
}

/// Groups `(model?, day?)` of the seeds that `keep`, ordered as the API orders them.
fn expected<'a>(
    seeds: impl IntoIterator<Item = &'a Seed>,
    group_by: &str,
) -> BTreeMap<(Option<String>, Option<String>), Expected> {
    let mut groups = BTreeMap::new();
    if group_by.is_empty() {
        groups.insert((None, None), Expected::default());
    }
    for s in seeds {
        let key = (
            group_by
                .contains("model")
                .then(|| s.model.unwrap_or_default().to_owned()),
            group_by
                .contains("day")
                .then(|| s.created_at.format("%Y-%m-%d").to_string()),
        );
        let group: &mut Expected = groups.entry(key).or_default();
        group.total += 1;
        match s.rating {
            Some("thumbs_up") => group.up += 1,
            Some(_) => group.down += 1,
            None => group.unrated += 1,
        }
        group.with_description += i64::from(s.description.is_some());
    }
    groups
}

/// The Wilson score interval, written out here from its definition.
fn wilson(up: i64, n: i64) -> (f64, f64) {
    let z = 1.959_964_f64;
    let (up, n) = (up as f64, n as f64);
    let p = up / n;
    let centre = p + z * z / (2.0 * n);
    let spread = z * ((p * (1.0 - p) + z * z / (4.0 * n)) / n).sqrt();
    let scale = 1.0 + z * z / n;
    ((centre - spread) / scale, (centre + spread) / scale)
}

fn close(actual: &Value, wanted: f64, what: &str) {
    let actual = actual
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {actual}"));
    assert!(
        (actual - wanted).abs() < 0.00005,
        "{what}: {actual} != {wanted:.4}"
    );
}

/// Asserts that an answer holds exactly these groups, in this order.
fn assert_groups(
    reply: &Reply,
    kind: &str,
    wanted: &BTreeMap<(Option<String>, Option<String>), Expected>,
    what: &str,
) {
    assert_eq!(reply.status, 200, "{what}: {}", reply.text);
    assert_eq!(reply.body["object"], "stats", "{what}");
    assert_eq!(reply.body["kind"], kind, "{what}");
    let groups = reply.body["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), wanted.len(), "{what}: {}", reply.text);
    for (group, ((model, day), counts)) in groups.iter().zip(wanted) {
        let what = format!("{what}: {model:?} {day:?}");
        assert_eq!(
            group.get("model").and_then(Value::as_str),
            model.as_deref(),
            "{what}"
        );
        assert_eq!(
            group.get("day").and_then(Value::as_str),
            day.as_deref(),
            "{what}"
        );
        assert_eq!(group["total"], counts.total, "{what}");
        assert_eq!(group["thumbs_up"], counts.up, "{what}");
        assert_eq!(group["thumbs_down"], counts.down, "{what}");
        assert_eq!(group["unrated"], counts.unrated, "{what}");
        assert_eq!(group["with_description"], counts.with_description, "{what}");
        let rated = counts.up + counts.down;
        if rated == 0 {
            assert_eq!(group["satisfaction"], Value::Null, "{what}");
            assert_eq!(group["satisfaction_ci95"], Value::Null, "{what}");
        } else {
            close(
                &group["satisfaction"],
                counts.up as f64 / rated as f64,
                &what,
            );
            let (low, high) = wilson(counts.up, rated);
            close(&group["satisfaction_ci95"][0], low, &what);
            close(&group["satisfaction_ci95"][1], high, &what);
        }
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn stats(app: &TestApp, query: &str) -> Reply {
    app.send(app.request(Method::GET, &format!("/api/v1/llm/feedback/stats?{query}")))
        .await
}

async fn every_figure_matches_counts_computed_from_the_entries_for_each_grouping_and_range(
    app: TestApp,
) {
    let seeds = seeds();
    seed(&app, &seeds).await;
    let mine = |s: &&Seed| s.tenant == "tenant-a" && s.kind == "completions";
    // Ranges: none, whole days, partial edge days on both sides, within one
    // day, open on either side, empty.
    let at = |days: i64, minutes: i64| day0() + Duration::days(days) + Duration::minutes(minutes);
    let ranges: Vec<(Option<DateTime<Utc>>, Option<DateTime<Utc>>)> = vec![
        (None, None),
        (Some(at(1, 0)), Some(at(4, 0))),
        (Some(at(0, 301)), Some(at(3, 1000))),
        (Some(at(2, 100)), Some(at(2, 900))),
        (Some(at(1, 720)), Some(at(2, 0))),
        (Some(at(3, 1)), None),
        (None, Some(at(2, 5))),
        (Some(at(2, 0)), Some(at(2, 0))),
        (Some(at(-30, 0)), Some(at(30, 0))),
    ];
    for (from, to) in &ranges {
        for group_by in ["", "model", "day", "model,day"] {
            let mut query = String::from("kind=completions");
            if !group_by.is_empty() {
                query.push_str(&format!("&group_by={}", group_by.replace(',', "%2C")));
            }
            if let Some(from) = from {
                query.push_str(&format!("&from={}", rfc3339(*from)));
            }
            if let Some(to) = to {
                query.push_str(&format!("&to={}", rfc3339(*to)));
            }
            let wanted = expected(
                seeds.iter().filter(mine).filter(|s| {
                    from.is_none_or(|from| s.created_at >= from)
                        && to.is_none_or(|to| s.created_at < to)
                }),
                group_by,
            );
            assert_groups(&stats(&app, &query).await, "completions", &wanted, &query);
        }
    }
    // An offset timestamp means the same instant: 02:00+02:00 is midnight UTC.
    let reply = stats(
        &app,
        "kind=completions&group_by=day&from=2024-03-02T02:00:00%2B02:00",
    )
    .await;
    let wanted = expected(
        seeds
            .iter()
            .filter(mine)
            .filter(|s| s.created_at >= at(1, 0)),
        "day",
    );
    assert_groups(&reply, "completions", &wanted, "offset");
}

async fn the_model_filter_and_the_kind_count_only_their_entries(app: TestApp) {
    let seeds = seeds();
    seed(&app, &seeds).await;
    let from = day0() + Duration::hours(7);
    for group_by in ["", "day", "model,day"] {
        let mut query = format!("kind=completions&model=claude-3&from={}", rfc3339(from));
        if !group_by.is_empty() {
            query.push_str(&format!("&group_by={}", group_by.replace(',', "%2C")));
        }
        let wanted = expected(
            seeds.iter().filter(|s| {
                s.tenant == "tenant-a"
                    && s.kind == "completions"
                    && s.model == Some("claude-3")
                    && s.created_at >= from
            }),
            group_by,
        );
        assert_groups(&stats(&app, &query).await, "completions", &wanted, &query);
    }
    let wanted = expected(
        seeds
            .iter()
            .filter(|s| s.tenant == "tenant-a" && s.kind == "responses"),
        "model",
    );
    assert_groups(
        &stats(&app, "kind=responses&group_by=model").await,
        "responses",
        &wanted,
        "responses",
    );
    // A model nobody used: nothing, one group of zeros.
    let reply = stats(&app, "kind=completions&model=nobody").await;
    assert_groups(&reply, "completions", &expected([], ""), "nobody");
}

async fn another_tenant_and_another_end_user_are_never_counted(app: TestApp) {
    let seeds = seeds();
    seed(&app, &seeds).await;
    let other = app.new_key("tenant-b").await;
    let path = "/api/v1/llm/feedback/stats?kind=completions&group_by=model%2Cday";
    let reply = app
        .send(app.client.get(app.url(path)).bearer_auth(&other))
        .await;
    let wanted = expected(
        seeds
            .iter()
            .filter(|s| s.tenant == "tenant-b" && s.kind == "completions"),
        "model,day",
    );
    assert_groups(&reply, "completions", &wanted, "tenant-b");
    // An end user sees only their own entries, on whole and partial days alike.
    for query in [
        "kind=completions&group_by=model%2Cday",
        "kind=completions&from=2024-03-02T00:00:00Z&to=2024-03-04T13:00:00Z",
    ] {
        let reply = app
            .send(
                app.request(Method::GET, &format!("/api/v1/llm/feedback/stats?{query}"))
                    .header("X-On-Behalf-Of", "u1"),
            )
            .await;
        let from = (query.contains("from")).then(|| day0() + Duration::days(1));
        let to = (query.contains("to=")).then(|| day0() + Duration::days(3) + Duration::hours(13));
        let wanted = expected(
            seeds.iter().filter(|s| {
                s.tenant == "tenant-a"
                    && s.kind == "completions"
                    && s.end_user == Some("u1")
                    && from.is_none_or(|from| s.created_at >= from)
                    && to.is_none_or(|to| s.created_at < to)
            }),
            if query.contains("group_by") {
                "model,day"
            } else {
                ""
            },
        );
        assert!(wanted.values().map(|g| g.total).sum::<i64>() > 0, "{query}");
        assert_groups(&reply, "completions", &wanted, query);
    }
    let reply = app
        .send(
            app.request(Method::GET, "/api/v1/llm/feedback/stats?kind=completions")
                .header("X-On-Behalf-Of", "nobody"),
        )
        .await;
    assert_groups(&reply, "completions", &expected([], ""), "nobody");
}

async fn every_acknowledged_write_is_in_the_next_answer_and_updates_move_buckets(app: TestApp) {
    let seeds = seeds();
    seed(&app, &seeds).await;
    let mut mine: Vec<Seed> = seeds
        .into_iter()
        .filter(|s| s.tenant == "tenant-a" && s.kind == "completions")
        .collect();
    let query = "kind=completions&group_by=model%2Cday";
    let check = |mine: Vec<Seed>, what: &'static str| {
        let app = &app;
        async move {
            let wanted = expected(&mine, "model,day");
            assert_groups(&stats(app, query).await, "completions", &wanted, what);
        }
    };
    // Creates through the API land today, with and without a model.
    let mut created = Vec::new();
    for (n, (model, rating, description)) in [
        (Some("gpt-4o"), Some("thumbs_up"), None),
        (None, None, Some("")),
        (Some("new-model"), Some("thumbs_down"), Some("bad")),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = json!({"id": format!("live-{n}")});
        for (field, value) in [
            ("model", model),
            ("rating", rating),
            ("description", description),
        ] {
            if let Some(value) = value {
                body[field] = json!(value);
            }
        }
        let entry = app.create_ok("completions", body).await;
        let created_at: DateTime<Utc> = entry["createdAt"].as_str().unwrap().parse().unwrap();
        let seed = Seed {
            tenant: "tenant-a",
            kind: "completions",
            id: format!("live-{n}"),
            model,
            end_user: None,
            rating,
            description: description.map(str::to_owned),
            created_at,
        };
        mine.push(seed.clone());
        created.push(seed);
        check(mine.clone(), "after a create").await;
    }
    // A conflicting create changes nothing.
    let reply = app
        .create(
            "completions",
            json!({"id": "live-0", "rating": "thumbs_down"}),
        )
        .await;
    assert_eq!(reply.status, 409);
    check(mine.clone(), "after a conflict").await;
    // Updates move entries between buckets, seeded ones (other days) too.
    let moves: [(&str, Value, Option<&str>, Option<Option<&str>>); 6] = [
        (
            "live-0",
            json!({"rating": "thumbs_down"}),
            Some("thumbs_down"),
            None,
        ),
        (
            "live-0",
            json!({"rating": null, "description": "why"}),
            None,
            Some(Some("why")),
        ),
        (
            "live-1",
            json!({"rating": "thumbs_up", "description": null}),
            Some("thumbs_up"),
            Some(None),
        ),
        (
            "seed-3",
            json!({"rating": "thumbs_up"}),
            Some("thumbs_up"),
            None,
        ),
        (
            "seed-4",
            json!({"description": null, "rating": null}),
            None,
            Some(None),
        ),
        ("seed-5", json!({}), None, None),
    ];
    for (id, body, rating, description) in moves {
        let before = mine.iter().position(|s| s.id == id).unwrap();
        app.update_ok("completions", id, body.clone()).await;
        let entry = &mut mine[before];
        if body.get("rating").is_some() {
            entry.rating = rating;
        }
        if let Some(description) = description {
            entry.description = description.map(str::to_owned);
        }
        check(mine.clone(), "after an update").await;
    }
    // An update of an entry that does not exist changes nothing.
    assert_eq!(
        app.update("completions", "nope", json!({"rating": "thumbs_up"}))
            .await
            .status,
        404
    );
    check(mine, "after a 404").await;
}

async fn deletes_erasures_and_retention_take_their_entries_out_of_the_counts(app: TestApp) {
    let seeds = seeds();
    seed(&app, &seeds).await;
    let query = "kind=completions&group_by=model%2Cday";
    let mut mine: Vec<Seed> = seeds
        .into_iter()
        .filter(|s| s.tenant == "tenant-a" && s.kind == "completions")
        .collect();
    let check = |mine: &[Seed], what: &'static str| {
        let wanted = expected(mine, "model,day");
        let app = &app;
        async move {
            assert_groups(&stats(app, query).await, "completions", &wanted, what);
        }
    };
    check(&mine, "as seeded").await;
    // Deletes: one rated with a description, one unrated, on other days.
    for id in ["seed-4", "seed-3", "seed-9"] {
        let reply = send(
            &app,
            Method::DELETE,
            &entry_path("completions", id),
            &[],
            None,
        )
        .await;
        assert_eq!(reply.status, 204, "{}", reply.text);
        mine.retain(|s| s.id != id);
        check(&mine, "after a delete").await;
    }
    // A delete of an entry that is gone changes nothing.
    let reply = send(
        &app,
        Method::DELETE,
        &entry_path("completions", "seed-4"),
        &[],
        None,
    )
    .await;
    assert_eq!(reply.status, 404);
    check(&mine, "after a 404 delete").await;
    // The erasure of an end user takes each of their entries away.
    let erased = mine.iter().filter(|s| s.end_user == Some("u1")).count();
    assert!(
        erased > 10,
        "the seeds give u1 entries on every day: {erased}"
    );
    let reply = send(
        &app,
        Method::DELETE,
        "/api/v1/llm/feedback/end-users/u1",
        &[],
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    mine.retain(|s| s.end_user != Some("u1"));
    check(&mine, "after an erasure").await;
    // Retention of everything created before the third day, in batches.
    let cutoff = day0() + Duration::days(2);
    loop {
        let deleted = app
            .store
            .delete_expired_feedback(cutoff, 25)
            .await
            .expect("retention batch")
            .expect("no other replica");
        if deleted == 0 {
            break;
        }
    }
    mine.retain(|s| s.created_at >= cutoff);
    assert!(!mine.is_empty());
    check(&mine, "after retention").await;
}

async fn without_entries_one_group_of_zeros_and_nulls_or_no_groups(app: TestApp) {
    let reply = stats(&app, "kind=completions").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.body,
        json!({"object": "stats", "kind": "completions", "groups": [{
            "total": 0, "thumbs_up": 0, "thumbs_down": 0, "unrated": 0, "with_description": 0,
            "satisfaction": null, "satisfaction_ci95": null
        }]})
    );
    for group_by in ["model", "day", "model%2Cday"] {
        let reply = stats(&app, &format!("kind=responses&group_by={group_by}")).await;
        assert_eq!(
            reply.body,
            json!({"object": "stats", "kind": "responses", "groups": []}),
            "{group_by}"
        );
    }
    // Unrated entries only: counts, but null satisfaction.
    app.create_ok("completions", json!({"id": "a", "model": "m"}))
        .await;
    let reply = stats(&app, "kind=completions&group_by=model").await;
    let group = &reply.body["groups"][0];
    assert_eq!(group["model"], "m");
    assert_eq!(group["total"], 1);
    assert_eq!(group["unrated"], 1);
    assert_eq!(group["satisfaction"], Value::Null);
    assert_eq!(group["satisfaction_ci95"], Value::Null);
}

async fn bad_stats_queries_are_400_with_details(app: TestApp) {
    for (query, fields) in [
        ("", &["kind"][..]),
        ("kind=chats", &["kind"]),
        ("kind=completions&group_by=week", &["group_by"]),
        ("kind=completions&group_by=day%2Cmodel", &["group_by"]),
        ("kind=completions&group_by=", &["group_by"]),
        ("kind=completions&from=2024-13-01T00:00:00Z", &["from"]),
        ("kind=completions&to=yesterday", &["to"]),
        ("kind=completions&from=2024-01-01", &["from"]),
        (
            "kind=completions&from=2024-02-01T00:00:00Z&to=2024-01-01T00:00:00Z",
            &["from"],
        ),
        (
            "kind=completions&group_by=day&from=2024-01-01T00:00:00Z&to=2025-01-01T00:00:00.001Z",
            &["to"],
        ),
        (
            "kind=completions&group_by=model%2Cday&from=2020-01-01T00:00:00Z&to=2024-01-01T00:00:00Z",
            &["to"],
        ),
        ("kind=completions&kind=completions", &["kind"]),
        ("kind=completions&rating=thumbs_up", &["rating"]),
        ("kind=completions&model=%20padded", &["model"]),
    ] {
        assert_invalid_fields(&stats(&app, query).await, fields);
    }
    // Over 366 days is fine when not grouped by day.
    let reply = stats(
        &app,
        "kind=completions&group_by=model&from=2020-01-01T00:00:00Z&to=2024-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // Without a key: 401 first, whatever is wrong with the query.
    let reply = app
        .send(app.client.get(app.url("/api/v1/llm/feedback/stats?kind=x")))
        .await;
    assert_eq!(reply.status, 401);
}
