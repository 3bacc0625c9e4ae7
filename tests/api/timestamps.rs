//! Entry timestamps under both spellings (API.md, "Resources"): MKA1's
//! documentation (and SDK 0.12.0) reads `createdAt`/`updatedAt`, MKA1's SDK
//! since 0.12.22 reads `created_at`/`updated_at`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{ENTRY_TIMESTAMPS, TestApp, assert_entry_timestamps, timestamp};

both_stores!(
    create_update_get_and_batch_carry_both_spellings_equal,
    the_entry_schema_requires_both_spellings_and_says_they_are_equal,
);

async fn create_update_get_and_batch_carry_both_spellings_equal(app: TestApp) {
    for kind in ["completions", "responses"] {
        let created = app
            .create_ok(kind, json!({"id": "both", "rating": "thumbs_up"}))
            .await;
        assert_entry_timestamps(&created);
        assert_eq!(created["created_at"], created["updated_at"], "{created}");
        // Milliseconds on the wire: let the update's time differ from the creation's.
        tokio::time::sleep(Duration::from_millis(20)).await;

        let updated = app
            .update_ok(kind, "both", json!({"rating": "thumbs_down"}))
            .await;
        let got = app.get(kind, "both").await;
        let batch = app
            .batch_get(kind, json!({"ids": ["both", "missing", "both"]}))
            .await;

        assert_entry_timestamps(&updated);
        assert_eq!(updated["created_at"], created["created_at"], "{updated}");
        assert!(
            timestamp(&updated["updated_at"]) > timestamp(&created["updated_at"]),
            "{kind}: updated_at did not move on PUT: {created} then {updated}"
        );
        assert_eq!(got.status, 200, "{}", got.text);
        assert_entry_timestamps(&got.body);
        assert_eq!(got.body, updated, "{kind}");
        assert_eq!(batch.status, 200, "{}", batch.text);
        for index in [0, 2] {
            let result = &batch.body["results"][index];
            assert_entry_timestamps(result);
            assert_eq!(result, &updated, "{kind}: batch result {index}");
        }
        assert_eq!(
            batch.body["results"][1],
            json!({"id": "missing", "error": "not_found"}),
            "{kind}: a not_found marker carries no timestamps"
        );
    }
}

async fn the_entry_schema_requires_both_spellings_and_says_they_are_equal(app: TestApp) {
    let reply = app.send(app.client.get(app.url("/openapi.json"))).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let schema = &reply.body["components"]["schemas"]["Feedback"];

    let mut properties: Vec<&str> = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("Feedback has no properties: {schema}"))
        .keys()
        .map(String::as_str)
        .collect();
    properties.sort_unstable();
    let mut expected = vec!["description", "id", "model", "rating"];
    expected.extend(ENTRY_TIMESTAMPS);
    expected.sort_unstable();
    assert_eq!(properties, expected, "API.md: no other field ever appears");
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap_or_else(|| panic!("Feedback requires nothing: {schema}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for key in ENTRY_TIMESTAMPS {
        assert!(required.contains(&key), "`{key}` is not required: {schema}");
        let description = schema["properties"][key]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            description.contains("equal"),
            "`{key}` does not say the spellings are equal: {description:?}"
        );
    }
}
