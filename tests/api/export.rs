//! `GET /api/v1/llm/feedback/export/{kind}`: CSV export.

use chrono::Utc;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::list::{assert_one_bounded_flood_error, unknown_parameter_flood};

/// Like `both_stores!`, on an app whose exports hold at most
/// `SMALL_EXPORT_CAP` rows.
macro_rules! both_stores_with_small_export_cap {
    ($($scenario:ident),+ $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let app = $crate::helpers::spawn_app_with(
                        $crate::helpers::Backend::Postgres,
                        |serve| serve.export_max_rows = super::SMALL_EXPORT_CAP as u64,
                    )
                    .await;
                    super::$scenario(app).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = $crate::helpers::spawn_app_with(
                        $crate::helpers::Backend::Sqlite,
                        |serve| serve.export_max_rows = super::SMALL_EXPORT_CAP as u64,
                    )
                    .await;
                    super::$scenario(app).await;
                }
            }
        )+
    };
}

both_stores!(
    export_is_an_attachment_of_utf8_csv_named_after_the_kind_and_today,
    export_rows_hold_every_field_with_unset_values_as_empty_cells,
    descriptions_with_commas_quotes_newlines_and_non_ascii_text_survive_a_csv_round_trip,
    cells_that_could_start_a_formula_are_prefixed_with_one_quote,
    export_follows_the_order_and_rating_parameters,
    an_export_with_nothing_to_show_is_just_the_header_line,
    export_of_one_kind_never_holds_entries_of_the_other,
    export_shows_each_caller_only_its_entries_with_the_end_user_in_the_user_column,
    bad_export_queries_are_400_invalid_request,
    a_flood_of_5000_unknown_export_parameters_is_one_400_with_20_details,
    an_export_of_50001_entries_stops_at_50000_rows_with_the_truncation_header,
);

both_stores_with_small_export_cap!(
    an_export_over_the_cap_holds_the_first_rows_in_order_and_says_it_is_truncated,
    an_export_of_exactly_the_cap_holds_every_row_and_no_truncation_header,
    a_rating_filter_that_fits_under_the_cap_is_not_truncated,
);

/// The cap of `both_stores_with_small_export_cap!` apps.
const SMALL_EXPORT_CAP: usize = 10;

/// The header row of every export (API.md).
const HEADER_ROW: &str = "id,model,rating,description,user,created_at,updated_at";

/// An export as received: the body as raw bytes (no BOM stripping).
struct Export {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Export {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("the export is UTF-8")
    }

    /// The data rows, read by a standard CSV reader, after checking that the
    /// answer is a 200 whose first line is the header row.
    fn rows(&self) -> Vec<Vec<String>> {
        assert_eq!(self.status, 200, "{}", self.text());
        let first_line = self.text().split("\r\n").next().unwrap_or_default();
        assert_eq!(first_line, HEADER_ROW);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(self.body.as_slice());
        let mut records = reader.records().map(|record| {
            record
                .expect("a well-formed CSV record")
                .iter()
                .map(str::to_owned)
                .collect::<Vec<String>>()
        });
        assert_eq!(
            records.next().expect("a header row"),
            HEADER_ROW.split(',').collect::<Vec<_>>()
        );
        records.collect()
    }
}

/// Sends an export request and keeps the body's bytes as they came.
async fn export(request: RequestBuilder) -> Export {
    let response = request.send().await.expect("request failed");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("response body").to_vec();
    Export {
        status,
        headers,
        body,
    }
}

fn export_path(kind: &str, query: &str) -> String {
    format!("/api/v1/llm/feedback/export/{kind}?{query}")
}

/// `GET /export/{kind}?{query}` with the app's (tenant-wide) key.
async fn export_as_tenant(app: &TestApp, kind: &str, query: &str) -> Export {
    export(app.request(Method::GET, &export_path(kind, query))).await
}

/// The row API.md derives from an entry as create, PUT or GET return it
/// (for values that do not start like a formula).
fn row_of(entry: &Value, user: &str) -> Vec<String> {
    let text = |field: &str| {
        entry
            .get(field)
            .map_or("", |v| v.as_str().expect("a string"))
    };
    vec![
        text("id").to_owned(),
        text("model").to_owned(),
        text("rating").to_owned(),
        text("description").to_owned(),
        user.to_owned(),
        text("createdAt").to_owned(),
        text("updatedAt").to_owned(),
    ]
}

fn ids_of(rows: &[Vec<String>]) -> Vec<&str> {
    rows.iter().map(|row| row[0].as_str()).collect()
}

/// Creates `count` completions `e-00`, `e-01`... with a rating on every
/// entry but each third; returns them in creation order.
async fn create_entries(app: &TestApp, count: usize) -> Vec<Value> {
    let mut created = Vec::with_capacity(count);
    for i in 0..count {
        let mut body = json!({"id": format!("e-{i:02}")});
        match i % 3 {
            0 => body["rating"] = json!("thumbs_up"),
            1 => body["rating"] = json!("thumbs_down"),
            _ => {}
        }
        created.push(app.create_ok("completions", body).await);
    }
    created
}

async fn export_is_an_attachment_of_utf8_csv_named_after_the_kind_and_today(app: TestApp) {
    create_entries(&app, 3).await;
    app.create_ok("responses", json!({"id": "resp-1"})).await;
    let day_before = Utc::now().format("%Y-%m-%d").to_string();

    let completions = export_as_tenant(&app, "completions", "").await;
    let responses = export_as_tenant(&app, "responses", "").await;

    let day_after = Utc::now().format("%Y-%m-%d").to_string();
    for (kind, export) in [("completions", &completions), ("responses", &responses)] {
        assert_eq!(export.status, 200, "{}", export.text());
        assert_eq!(
            export.header("content-type"),
            Some("text/csv; charset=utf-8")
        );
        assert!(
            !export.body.starts_with(b"\xEF\xBB\xBF"),
            "no byte-order mark"
        );
        assert!(export.text().starts_with(&format!("{HEADER_ROW}\r\n")));
        assert_eq!(export.header("x-export-truncated"), None);
        let disposition = export.header("content-disposition").expect("a disposition");
        assert!(disposition.starts_with("attachment;"), "{disposition}");
        let file_name = disposition.split_once("filename=").map_or_else(
            || panic!("no filename: {disposition}"),
            |(_, name)| name.trim_matches('"'),
        );
        assert!(file_name.contains(kind), "{file_name}");
        assert!(
            file_name.contains(&day_before) || file_name.contains(&day_after),
            "{file_name} names today ({day_before})"
        );
    }
    assert_eq!(completions.rows().len(), 3);
    assert_eq!(responses.rows().len(), 1);
}

async fn export_rows_hold_every_field_with_unset_values_as_empty_cells(app: TestApp) {
    let bare = app.create_ok("completions", json!({"id": "bare"})).await;
    let full = app
        .create_ok(
            "completions",
            json!({"id": "full", "model": "gpt-4o", "rating": "thumbs_down", "description": "meh"}),
        )
        .await;
    app.create_ok(
        "completions",
        json!({"id": "updated", "rating": "thumbs_up", "description": "first"}),
    )
    .await;
    let updated = app
        .update(
            "completions",
            "updated",
            json!({"rating": null, "description": "second"}),
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    let empty_description = app
        .create_ok(
            "completions",
            json!({"id": "empty-description", "description": ""}),
        )
        .await;

    let export = export_as_tenant(&app, "completions", "").await;

    let rows = export.rows();
    assert_eq!(
        rows,
        [
            vec!["empty-description", "", "", "", ""],
            vec!["updated", "", "", "second", ""],
            vec!["full", "gpt-4o", "thumbs_down", "meh", ""],
            vec!["bare", "", "", "", ""],
        ]
        .iter()
        .zip([&empty_description, &updated.body, &full, &bare])
        .map(|(cells, entry)| {
            let mut row: Vec<String> = cells.iter().map(|c| (*c).to_owned()).collect();
            row.push(entry["createdAt"].as_str().expect("createdAt").to_owned());
            row.push(entry["updatedAt"].as_str().expect("updatedAt").to_owned());
            row
        })
        .collect::<Vec<_>>()
    );
    assert_eq!(rows[1], row_of(&updated.body, ""));
}

async fn descriptions_with_commas_quotes_newlines_and_non_ascii_text_survive_a_csv_round_trip(
    app: TestApp,
) {
    let descriptions = [
        "plain",
        "a, b, and c",
        "she said \"hi\"",
        "\"",
        "\"\"",
        ",",
        "line one\r\nline two",
        "line one\nline two\n",
        "ends with a carriage return\r",
        "\n\nblank lines first",
        "ünïcødé, 日本語 and 😀 emoji",
        "mixed: \"quoted, comma\"\r\n\tthen a tab and 'quote'",
        "   spaces around   ",
    ];
    let mut created = Vec::new();
    for (i, description) in descriptions.iter().enumerate() {
        created.push(
            app.create_ok(
                "completions",
                json!({"id": format!("d-{i:02}"), "description": description, "model": "m, \"1\""}),
            )
            .await,
        );
    }

    let export = export_as_tenant(&app, "completions", "order=asc").await;

    let rows = export.rows();
    let expected: Vec<Vec<String>> = created.iter().map(|entry| row_of(entry, "")).collect();
    assert_eq!(rows, expected);
    for (row, description) in rows.iter().zip(descriptions) {
        assert_eq!(row[3], description);
        assert_eq!(row[1], "m, \"1\"");
    }
}

async fn cells_that_could_start_a_formula_are_prefixed_with_one_quote(app: TestApp) {
    // (id, model, description, end user)
    let entries: [(&str, Option<&str>, &str, Option<&str>); 10] = [
        ("=id", Some("=model"), "=1+1", Some("=user")),
        ("+id", Some("+model"), "+1", Some("+user")),
        ("-id", Some("-model"), "-1", Some("-user")),
        ("@id", Some("@model"), "@SUM(A1:A2)", Some("@user")),
        ("tab", None, "\tindented", None),
        ("carriage-return", None, "\rreturn, then\r\nmore", None),
        ("safe", Some("gpt=4"), "1=1 and -x and @y", Some("user+1")),
        ("space-first", None, " =SUM(A1)", None),
        ("quote-first", None, "'=already quoted", None),
        ("==id", Some("--model"), "==twice", Some("@@user")),
    ];
    let defused = |text: &str| {
        if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{text}")
        } else {
            text.to_owned()
        }
    };
    let mut expected = Vec::new();
    for (id, model, description, user) in entries {
        let caller = app.as_caller(&app.api_key, user);
        let mut body = json!({"id": id, "description": description});
        if let Some(model) = model {
            body["model"] = json!(model);
        }
        let reply = caller.create("completions", body).await;
        assert_eq!(reply.status, 201, "{id}: {}", reply.text);
        expected.push(vec![
            defused(id),
            defused(model.unwrap_or_default()),
            String::new(),
            defused(description),
            defused(user.unwrap_or_default()),
            reply.body["createdAt"]
                .as_str()
                .expect("createdAt")
                .to_owned(),
            reply.body["updatedAt"]
                .as_str()
                .expect("updatedAt")
                .to_owned(),
        ]);
    }

    let export = export_as_tenant(&app, "completions", "order=asc").await;

    let rows = export.rows();
    assert_eq!(rows, expected);
    assert_eq!(rows[0][..5], ["'=id", "'=model", "", "'=1+1", "'=user"]);
    assert_eq!(rows[4][3], "'\tindented");
    assert_eq!(rows[5][3], "'\rreturn, then\r\nmore");
    assert_eq!(
        rows[6][..5],
        ["safe", "gpt=4", "", "1=1 and -x and @y", "user+1"]
    );
    assert_eq!(
        rows[9][..5],
        ["'==id", "'--model", "", "'==twice", "'@@user"]
    );
    for (id, model, description, _) in entries {
        let got = app.get("completions", id).await;
        assert_eq!(got.status, 200, "{id}: {}", got.text);
        assert_eq!(got.body["id"], id);
        assert_eq!(got.body["description"], description);
        assert_eq!(got.body.get("model").and_then(Value::as_str), model);
    }
}

async fn export_follows_the_order_and_rating_parameters(app: TestApp) {
    let created = create_entries(&app, 14).await;
    let oldest_first: Vec<Vec<String>> = created.iter().map(|e| row_of(e, "")).collect();
    let newest_first: Vec<Vec<String>> = oldest_first.iter().rev().cloned().collect();
    let rated = |rows: &[Vec<String>], rating: &str| -> Vec<Vec<String>> {
        rows.iter()
            .filter(|row| row[2] == rating)
            .cloned()
            .collect()
    };

    let cases = [
        ("", newest_first.clone()),
        ("order=desc", newest_first.clone()),
        ("order=asc", oldest_first.clone()),
        ("rating=thumbs_up", rated(&newest_first, "thumbs_up")),
        (
            "rating=thumbs_down&order=asc",
            rated(&oldest_first, "thumbs_down"),
        ),
        (
            "order=desc&rating=thumbs_down",
            rated(&newest_first, "thumbs_down"),
        ),
    ];
    for (query, expected) in cases {
        let export = export_as_tenant(&app, "completions", query).await;

        let rows = export.rows();
        assert_eq!(ids_of(&rows), ids_of(&expected), "{query}");
        assert_eq!(rows, expected, "{query}");
        assert_eq!(export.header("x-export-truncated"), None, "{query}");
    }
}

async fn an_export_with_nothing_to_show_is_just_the_header_line(app: TestApp) {
    app.create_ok("completions", json!({"id": "up", "rating": "thumbs_up"}))
        .await;

    let empty_kind = export_as_tenant(&app, "responses", "").await;
    let no_match = export_as_tenant(&app, "completions", "rating=thumbs_down&order=asc").await;
    let other_user = export(
        app.as_caller(&app.api_key, Some("alice"))
            .request(Method::GET, &export_path("completions", "")),
    )
    .await;

    for export in [&empty_kind, &no_match, &other_user] {
        assert_eq!(export.status, 200, "{}", export.text());
        assert_eq!(
            export.header("content-type"),
            Some("text/csv; charset=utf-8")
        );
        assert_eq!(export.text(), format!("{HEADER_ROW}\r\n"));
        assert_eq!(export.header("x-export-truncated"), None);
    }
}

async fn export_of_one_kind_never_holds_entries_of_the_other(app: TestApp) {
    let completion = app
        .create_ok("completions", json!({"id": "same", "rating": "thumbs_up"}))
        .await;
    let response = app
        .create_ok(
            "responses",
            json!({"id": "same", "description": "the response"}),
        )
        .await;
    let only_response = app.create_ok("responses", json!({"id": "resp-only"})).await;

    let completions = export_as_tenant(&app, "completions", "").await;
    let responses = export_as_tenant(&app, "responses", "").await;

    assert_eq!(completions.rows(), [row_of(&completion, "")]);
    assert_eq!(
        responses.rows(),
        [row_of(&only_response, ""), row_of(&response, "")]
    );
}

async fn export_shows_each_caller_only_its_entries_with_the_end_user_in_the_user_column(
    app: TestApp,
) {
    let tenant_b = app.new_key("tenant-b").await;
    let alice = app.as_caller(&app.api_key, Some("alice"));
    let bob = app.as_caller(&app.api_key, Some("bob"));
    let other_tenant = app.as_caller(&tenant_b, None);
    let other_tenants_alice = app.as_caller(&tenant_b, Some("alice"));
    let mut rows_of_tenant_a = Vec::new();
    let mut rows_of_alice = Vec::new();
    let mut rows_of_tenant_b = Vec::new();
    for i in 0..2 {
        let wide = app
            .create_ok("completions", json!({"id": format!("wide-{i}")}))
            .await;
        rows_of_tenant_a.push(row_of(&wide, ""));
        let reply = alice
            .create_ok(
                "completions",
                json!({"id": format!("alice-{i}"), "rating": "thumbs_up"}),
            )
            .await;
        rows_of_tenant_a.push(row_of(&reply, "alice"));
        rows_of_alice.push(row_of(&reply, "alice"));
        let reply = bob
            .create_ok("completions", json!({"id": format!("bob-{i}")}))
            .await;
        rows_of_tenant_a.push(row_of(&reply, "bob"));
        let reply = other_tenant
            .create_ok(
                "completions",
                json!({"id": format!("wide-{i}"), "description": "tenant b"}),
            )
            .await;
        rows_of_tenant_b.push(row_of(&reply, ""));
        let reply = other_tenants_alice
            .create_ok("completions", json!({"id": format!("b-alice-{i}")}))
            .await;
        rows_of_tenant_b.push(row_of(&reply, "alice"));
    }
    let path = export_path("completions", "order=asc");

    let as_tenant_a = export(app.request(Method::GET, &path)).await;
    let as_alice = export(alice.request(Method::GET, &path)).await;
    let as_tenant_b = export(other_tenant.request(Method::GET, &path)).await;
    let as_tenant_b_alice = export(other_tenants_alice.request(Method::GET, &path)).await;

    assert_eq!(as_tenant_a.rows(), rows_of_tenant_a);
    assert_eq!(as_alice.rows(), rows_of_alice);
    assert_eq!(as_tenant_b.rows(), rows_of_tenant_b);
    let b_alice: Vec<Vec<String>> = rows_of_tenant_b
        .iter()
        .filter(|row| row[4] == "alice")
        .cloned()
        .collect();
    assert_eq!(b_alice.len(), 2);
    assert_eq!(as_tenant_b_alice.rows(), b_alice);
}

async fn bad_export_queries_are_400_invalid_request(app: TestApp) {
    create_entries(&app, 3).await;
    let queries = [
        "limit=5",
        "after=e-00",
        "foo=bar",
        "Order=asc",
        "order=asc&order=asc",
        "rating=thumbs_up&rating=thumbs_down",
        "order=ASC",
        "order=",
        "order=sideways",
        "rating=bogus",
        "rating=Thumbs_Up",
        "rating=",
        "order=asc&limit=5",
    ];

    for query in queries {
        let reply = app.export("completions", query).await;

        assert_eq!(reply.status, 400, "{query}: {}", reply.text);
        assert_eq!(reply.error_code(), "invalid_request", "{query}");
        assert_eq!(reply.header("x-export-truncated"), None, "{query}");
    }
}

async fn a_flood_of_5000_unknown_export_parameters_is_one_400_with_20_details(app: TestApp) {
    let reply = app
        .export("completions", &unknown_parameter_flood(5000))
        .await;

    assert_one_bounded_flood_error(&reply, 5000);
    assert_eq!(reply.header("x-export-truncated"), None);
}

async fn an_export_over_the_cap_holds_the_first_rows_in_order_and_says_it_is_truncated(
    app: TestApp,
) {
    let created = create_entries(&app, 15).await;
    let oldest_first: Vec<Vec<String>> = created.iter().map(|e| row_of(e, "")).collect();
    let newest_first: Vec<Vec<String>> = oldest_first.iter().rev().cloned().collect();

    let desc = export_as_tenant(&app, "completions", "").await;
    let asc = export_as_tenant(&app, "completions", "order=asc").await;

    assert_eq!(desc.header("x-export-truncated"), Some("true"));
    assert_eq!(desc.rows(), newest_first[..SMALL_EXPORT_CAP]);
    assert_eq!(asc.header("x-export-truncated"), Some("true"));
    assert_eq!(asc.rows(), oldest_first[..SMALL_EXPORT_CAP]);
}

async fn an_export_of_exactly_the_cap_holds_every_row_and_no_truncation_header(app: TestApp) {
    let created = create_entries(&app, SMALL_EXPORT_CAP).await;
    let oldest_first: Vec<Vec<String>> = created.iter().map(|e| row_of(e, "")).collect();
    let newest_first: Vec<Vec<String>> = oldest_first.iter().rev().cloned().collect();

    let desc = export_as_tenant(&app, "completions", "").await;
    let asc = export_as_tenant(&app, "completions", "order=asc").await;

    assert_eq!(desc.header("x-export-truncated"), None);
    assert_eq!(desc.rows(), newest_first);
    assert_eq!(asc.header("x-export-truncated"), None);
    assert_eq!(asc.rows(), oldest_first);
}

async fn a_rating_filter_that_fits_under_the_cap_is_not_truncated(app: TestApp) {
    // 15 entries: 5 thumbs_up, 5 thumbs_down, 5 unrated.
    let created = create_entries(&app, 15).await;
    let thumbs_up: Vec<Vec<String>> = created
        .iter()
        .rev()
        .filter(|entry| entry["rating"] == "thumbs_up")
        .map(|entry| row_of(entry, ""))
        .collect();

    let filtered = export_as_tenant(&app, "completions", "rating=thumbs_up").await;
    let everything = export_as_tenant(&app, "completions", "").await;

    assert_eq!(thumbs_up.len(), 5);
    assert_eq!(filtered.header("x-export-truncated"), None);
    assert_eq!(filtered.rows(), thumbs_up);
    assert_eq!(everything.header("x-export-truncated"), Some("true"));
    assert_eq!(everything.rows().len(), SMALL_EXPORT_CAP);
}

async fn an_export_of_50001_entries_stops_at_50000_rows_with_the_truncation_header(app: TestApp) {
    app.insert_completions_directly("bulk", 50_001).await;

    let export = export_as_tenant(&app, "completions", "").await;

    assert_eq!(export.header("x-export-truncated"), Some("true"));
    let rows = export.rows();
    assert_eq!(rows.len(), 50_000);
    // One timestamp for all: newest first is last inserted first.
    let expected: Vec<(String, &str)> = (2..=50_001)
        .rev()
        .map(|n| {
            let rating = ["", "thumbs_up", "thumbs_down"][n % 3];
            (format!("bulk-{n}"), rating)
        })
        .collect();
    let listed: Vec<(String, &str)> = rows
        .iter()
        .map(|row| (row[0].clone(), row[2].as_str()))
        .collect();
    assert!(
        listed == expected,
        "rows are not bulk-50001 down to bulk-2, each once, with their ratings"
    );
    assert!(
        rows.iter()
            .all(|row| row[4].is_empty() && row[5] == rows[0][5])
    );
}
