//! `POST /api/v1/llm/feedback/{kind}`.

use chrono::Utc;
use serde_json::json;

use crate::helpers::{
    ENTRY_TIMESTAMPS, TestApp, assert_invalid_fields, entry_fields, is_utc_millisecond_timestamp,
    timestamp, with_timestamps,
};

both_stores!(
    create_returns_201_with_the_entry_of_the_brief_example,
    create_then_duplicate_is_409_and_leaves_the_entry_untouched,
    create_with_only_an_id_omits_rating_description_and_model,
    create_with_every_field_returns_exactly_those_fields,
    create_keeps_an_empty_description_as_an_empty_string,
    create_with_null_rating_description_and_model_means_absent,
    create_timestamps_are_utc_milliseconds_close_to_now_and_equal,
    create_works_for_both_kinds_and_they_are_separate_namespaces,
    model_is_absent_unless_given_and_never_changes_after_a_put,
    model_of_256_multibyte_characters_is_accepted,
    invalid_models_are_400_naming_model_and_create_nothing,
    create_without_an_id_or_with_a_null_id_is_400_naming_id,
    create_with_an_empty_id_is_400,
    id_of_256_multibyte_characters_is_accepted_and_257_is_400,
    ids_with_control_characters_are_400,
    ids_with_leading_or_trailing_whitespace_are_400,
    ids_with_inner_spaces_are_accepted,
    description_of_2000_emoji_or_accented_letters_is_accepted,
    description_of_2001_letters_is_400_with_the_documented_envelope,
    description_of_2001_emoji_is_400,
    description_text_is_preserved_exactly,
    both_ratings_are_accepted,
    rating_values_other_than_the_two_are_400_naming_both,
    ratings_of_the_wrong_type_are_400_naming_rating,
    several_bad_fields_give_one_details_item_each,
    create_with_an_unknown_field_is_400,
);

async fn create_returns_201_with_the_entry_of_the_brief_example(app: TestApp) {
    let reply = app
        .create_ok(
            "responses",
            json!({"id": "resp-xyz789", "rating": "thumbs_up", "description": "Very helpful response!"}),
        ).await;
    let body = reply.as_object().expect("an object");
    assert_eq!(body["id"], "resp-xyz789");
    assert_eq!(body["rating"], "thumbs_up");
    assert_eq!(body["description"], "Very helpful response!");
    assert_eq!(body["createdAt"], body["updatedAt"]);
    assert_eq!(entry_fields(&reply), ["description", "id", "rating"]);
}

async fn create_then_duplicate_is_409_and_leaves_the_entry_untouched(app: TestApp) {
    let first = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-1", "rating": "thumbs_up"}),
        )
        .await;

    let second = app
        .create(
            "completions",
            json!({"id": "chatcmpl-1", "rating": "thumbs_down", "description": "changed"}),
        )
        .await;

    assert_eq!(second.status, 409);
    assert_eq!(second.error_code(), "conflict");
    let stored = app.get("completions", "chatcmpl-1").await;
    assert_eq!(stored.body, first);
}

async fn create_with_only_an_id_omits_rating_description_and_model(app: TestApp) {
    let reply = app
        .create_ok("completions", json!({"id": "chatcmpl-bare"}))
        .await;
    assert_eq!(entry_fields(&reply), ["id"]);
    assert_eq!(reply["id"], "chatcmpl-bare");
    let stored = app.get("completions", "chatcmpl-bare").await;
    assert_eq!(entry_fields(&stored.body), ["id"]);
}

async fn create_with_every_field_returns_exactly_those_fields(app: TestApp) {
    let reply = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-full", "rating": "thumbs_down", "description": "meh", "model": "gpt-4o"}),
        ).await;
    let created_at = reply["createdAt"].clone();
    assert_eq!(
        reply,
        with_timestamps(
            json!({
                "id": "chatcmpl-full",
                "rating": "thumbs_down",
                "description": "meh",
                "model": "gpt-4o",
            }),
            &created_at,
            &created_at,
        )
    );
}

async fn create_keeps_an_empty_description_as_an_empty_string(app: TestApp) {
    let reply = app
        .create_ok("responses", json!({"id": "resp-empty", "description": ""}))
        .await;
    assert_eq!(reply["description"], json!(""));
    let stored = app.get("responses", "resp-empty").await;
    assert_eq!(stored.body["description"], json!(""));
    assert_eq!(entry_fields(&stored.body), ["description", "id"]);
}

async fn create_with_null_rating_description_and_model_means_absent(app: TestApp) {
    let reply = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-nulls", "rating": null, "description": null, "model": null}),
        )
        .await;
    assert_eq!(entry_fields(&reply), ["id"]);
    let stored = app.get("completions", "chatcmpl-nulls").await;
    assert_eq!(stored.body, reply);
}

async fn create_timestamps_are_utc_milliseconds_close_to_now_and_equal(app: TestApp) {
    let before = Utc::now();

    let reply = app
        .create_ok("completions", json!({"id": "chatcmpl-time"}))
        .await;

    let after = Utc::now();
    for field in ENTRY_TIMESTAMPS {
        let text = reply[field].as_str().expect("a string");
        assert!(is_utc_millisecond_timestamp(text), "{field}: {text}");
    }
    assert_eq!(reply["createdAt"], reply["updatedAt"]);
    assert_eq!(reply["created_at"], reply["updated_at"]);
    let created_at = timestamp(&reply["createdAt"]);
    let slack = chrono::Duration::seconds(2);
    assert!(
        before - slack <= created_at && created_at <= after + slack,
        "{created_at} not between {before} and {after}"
    );
}

async fn create_works_for_both_kinds_and_they_are_separate_namespaces(app: TestApp) {
    let completion = app
        .create_ok(
            "completions",
            json!({"id": "shared-id", "rating": "thumbs_up", "description": "completion"}),
        )
        .await;

    let response = app
        .create_ok(
            "responses",
            json!({"id": "shared-id", "rating": "thumbs_down"}),
        )
        .await;

    let stored_completion = app.get("completions", "shared-id").await;
    let stored_response = app.get("responses", "shared-id").await;
    assert_eq!(stored_completion.body, completion);
    assert_eq!(stored_response.body, response);
    assert_eq!(stored_completion.body["rating"], "thumbs_up");
    assert_eq!(stored_response.body["rating"], "thumbs_down");
    assert_eq!(entry_fields(&stored_response.body), ["id", "rating"]);
}

async fn model_is_absent_unless_given_and_never_changes_after_a_put(app: TestApp) {
    let with_model = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-m", "model": "gpt-4o-mini"}),
        )
        .await;
    app.create_ok("completions", json!({"id": "chatcmpl-no-m"}))
        .await;
    assert_eq!(with_model["model"], "gpt-4o-mini");

    let updated = app
        .update(
            "completions",
            "chatcmpl-m",
            json!({"rating": "thumbs_up", "description": "new"}),
        )
        .await;
    let cleared = app
        .update(
            "completions",
            "chatcmpl-m",
            json!({"rating": null, "description": null}),
        )
        .await;
    let updated_without = app
        .update(
            "completions",
            "chatcmpl-no-m",
            json!({"rating": "thumbs_down"}),
        )
        .await;

    assert_eq!(updated.status, 200, "{}", updated.text);
    assert_eq!(updated.body["model"], "gpt-4o-mini");
    assert_eq!(cleared.status, 200, "{}", cleared.text);
    assert_eq!(cleared.body["model"], "gpt-4o-mini");
    let stored = app.get("completions", "chatcmpl-m").await;
    assert_eq!(stored.body["model"], "gpt-4o-mini");
    assert_eq!(updated_without.status, 200, "{}", updated_without.text);
    assert_eq!(entry_fields(&updated_without.body), ["id", "rating"]);
    let stored_without = app.get("completions", "chatcmpl-no-m").await;
    assert_eq!(stored_without.body.get("model"), None);
}

async fn model_of_256_multibyte_characters_is_accepted(app: TestApp) {
    let model = "é".repeat(256);

    let reply = app
        .create_ok(
            "completions",
            json!({"id": "chatcmpl-long-model", "model": model}),
        )
        .await;
    assert_eq!(reply["model"], json!(model));
}

async fn invalid_models_are_400_naming_model_and_create_nothing(app: TestApp) {
    let bad_models = [
        String::new(),
        "m".repeat(257),
        "é".repeat(257),
        "gpt\u{0}4".to_owned(),
        "gpt\n4".to_owned(),
        "gpt\u{7f}".to_owned(),
        " gpt-4".to_owned(),
        "gpt-4 ".to_owned(),
        "\u{a0}gpt-4".to_owned(),
        "gpt-4\u{3000}".to_owned(),
    ];

    for (n, model) in bad_models.iter().enumerate() {
        let id = format!("chatcmpl-bad-model-{n}");
        let reply = app
            .create("completions", json!({"id": id, "model": model}))
            .await;

        assert_invalid_fields(&reply, &["model"]);
        assert_eq!(app.get("completions", &id).await.status, 404, "{model:?}");
    }
}

async fn create_without_an_id_or_with_a_null_id_is_400_naming_id(app: TestApp) {
    let bodies = [
        json!({"rating": "thumbs_up"}),
        json!({}),
        json!({"id": null, "description": "no id"}),
    ];

    for body in bodies {
        let reply = app.create("completions", body.clone()).await;

        assert_invalid_fields(&reply, &["id"]);
        let message = reply.body["error"]["message"].as_str().expect("a message");
        assert!(message.contains("id"), "{body}: {message}");
    }
}

async fn create_with_an_empty_id_is_400(app: TestApp) {
    let reply = app
        .create("completions", json!({"id": "", "rating": "thumbs_up"}))
        .await;

    assert_invalid_fields(&reply, &["id"]);
}

async fn id_of_256_multibyte_characters_is_accepted_and_257_is_400(app: TestApp) {
    let longest = "é".repeat(256);
    let too_long = "é".repeat(257);

    let accepted = app.create_ok("responses", json!({"id": longest})).await;
    let refused = app.create("responses", json!({"id": too_long})).await;

    assert_eq!(accepted["id"], json!(longest));
    let stored = app.get("responses", &longest).await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    assert_eq!(stored.body, accepted);
    assert_invalid_fields(&refused, &["id"]);
    assert_eq!(app.get("responses", &too_long).await.status, 400);
}

async fn ids_with_control_characters_are_400(app: TestApp) {
    let ids = [
        "a\u{0}b", "a\u{1f}b", "a\u{7f}b", "a\u{85}b", "a\u{9f}b", "a\nb", "a\tb", "\u{0}",
    ];

    for id in ids {
        let reply = app.create("completions", json!({"id": id})).await;

        assert_invalid_fields(&reply, &["id"]);
    }
}

async fn ids_with_leading_or_trailing_whitespace_are_400(app: TestApp) {
    let ids = [
        " lead",
        "trail ",
        " both ",
        "\u{a0}nbsp",
        "nbsp\u{a0}",
        "\u{3000}ideographic",
        "ideographic\u{3000}",
        "\u{2003}em",
        "line-sep\u{2028}",
        " ",
    ];

    for id in ids {
        let reply = app.create("completions", json!({"id": id})).await;

        assert_invalid_fields(&reply, &["id"]);
    }
}

async fn ids_with_inner_spaces_are_accepted(app: TestApp) {
    let id = "inner  spaces\u{a0}and\u{3000}more";

    let reply = app.create_ok("completions", json!({"id": id})).await;
    assert_eq!(reply["id"], id);
}

async fn description_of_2000_emoji_or_accented_letters_is_accepted(app: TestApp) {
    let descriptions = [("emoji", "😀".repeat(2000)), ("accents", "é".repeat(2000))];

    for (id, description) in descriptions {
        let reply = app
            .create("completions", json!({"id": id, "description": description}))
            .await;

        assert_eq!(reply.status, 201, "{id}: {}", reply.text);
        assert_eq!(reply.body["description"], json!(description));
        let stored = app.get("completions", id).await;
        assert_eq!(stored.body["description"], json!(description));
    }
}

async fn description_of_2001_letters_is_400_with_the_documented_envelope(app: TestApp) {
    let reply = app
        .create(
            "completions",
            json!({"id": "chatcmpl-long", "description": "a".repeat(2001)}),
        )
        .await;

    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(
        reply.body,
        json!({"error": {
            "code": "invalid_request",
            "message": "description: must be at most 2000 characters (got 2001)",
            "details": [{"field": "description", "message": "must be at most 2000 characters (got 2001)"}],
        }})
    );
    assert_eq!(app.get("completions", "chatcmpl-long").await.status, 404);
}

async fn description_of_2001_emoji_is_400(app: TestApp) {
    let reply = app
        .create(
            "completions",
            json!({"id": "chatcmpl-emoji", "description": "😀".repeat(2001)}),
        )
        .await;

    assert_invalid_fields(&reply, &["description"]);
    assert_eq!(
        reply.body["error"]["details"][0]["message"],
        "must be at most 2000 characters (got 2001)"
    );
}

async fn description_text_is_preserved_exactly(app: TestApp) {
    let description = "  line one\nline two\r\n\t\"quoted\" 'single' \\ back\\slash, \
                       comma; =SUM(A1) ünïcødé 日本語 😀👍🏽 e\u{301}  ";

    let reply = app
        .create_ok(
            "responses",
            json!({"id": "resp-text", "description": description}),
        )
        .await;
    assert_eq!(reply["description"], description);
    let stored = app.get("responses", "resp-text").await;
    assert_eq!(stored.body["description"], description);
}

async fn both_ratings_are_accepted(app: TestApp) {
    for rating in ["thumbs_up", "thumbs_down"] {
        let reply = app
            .create_ok("completions", json!({"id": rating, "rating": rating}))
            .await;
        assert_eq!(reply["rating"], rating);
        assert_eq!(app.get("completions", rating).await.body["rating"], rating);
    }
}

async fn rating_values_other_than_the_two_are_400_naming_both(app: TestApp) {
    let ratings = [
        "THUMBS_UP",
        "up",
        "",
        "thumbs-up",
        " thumbs_up",
        "thumbs_down ",
    ];

    for rating in ratings {
        let reply = app
            .create("completions", json!({"id": "chatcmpl-r", "rating": rating}))
            .await;

        assert_invalid_fields(&reply, &["rating"]);
        let message = reply.body["error"]["message"].as_str().expect("a message");
        assert!(
            message.contains("thumbs_up") && message.contains("thumbs_down"),
            "{rating:?}: {message}"
        );
    }
    assert_eq!(app.get("completions", "chatcmpl-r").await.status, 404);
}

async fn ratings_of_the_wrong_type_are_400_naming_rating(app: TestApp) {
    let ratings = [json!(1), json!(true), json!(["thumbs_up"]), json!({"v": 1})];

    for rating in ratings {
        let reply = app
            .create("completions", json!({"id": "chatcmpl-t", "rating": rating}))
            .await;

        assert_invalid_fields(&reply, &["rating"]);
    }
    assert_eq!(app.get("completions", "chatcmpl-t").await.status, 404);
}

async fn several_bad_fields_give_one_details_item_each(app: TestApp) {
    let two = app
        .create(
            "completions",
            json!({"id": "chatcmpl-2", "rating": "up", "description": "a".repeat(2001)}),
        )
        .await;
    let four = app
        .create(
            "completions",
            json!({"id": " x", "rating": "up", "description": "a".repeat(2001), "model": ""}),
        )
        .await;

    assert_invalid_fields(&two, &["description", "rating"]);
    assert_invalid_fields(&four, &["description", "id", "model", "rating"]);
}

async fn create_with_an_unknown_field_is_400(app: TestApp) {
    let reply = app
        .create(
            "completions",
            json!({"id": "chatcmpl-u", "rating": "thumbs_up", "score": 5}),
        )
        .await;

    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.error_code(), "invalid_request");
    assert_eq!(app.get("completions", "chatcmpl-u").await.status, 404);
}
