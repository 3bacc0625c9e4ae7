//! Store-level outcomes of the key operations, on both stores: each ends in
//! exactly one variant of its outcome enum.

use llm_feedback::auth::generate_key;
use llm_feedback::feedback::TenantId;
use llm_feedback::store::{KeyInsertion, Revocation};

use crate::helpers::TestApp;

both_stores!(
    a_key_stored_twice_is_already_there_the_second_time,
    a_key_revoked_twice_is_already_revoked_the_second_time_and_keeps_its_time,
    a_key_revoked_by_eight_callers_at_once_is_revoked_by_exactly_one,
    revoking_an_unknown_key_id_finds_nothing,
);

async fn a_key_stored_twice_is_already_there_the_second_time(app: TestApp) {
    let key = generate_key(TenantId::parse("acme".to_owned()).unwrap(), None);

    let first = app.store.insert_api_key(&key.record).await.unwrap();
    let second = app.store.insert_api_key(&key.record).await.unwrap();

    assert_eq!(first, KeyInsertion::Inserted);
    assert_eq!(second, KeyInsertion::AlreadyExists);
    let keys = app.store.list_api_keys(None).await.unwrap();
    assert_eq!(keys.iter().filter(|k| k.id == key.record.id).count(), 1);
}

async fn a_key_revoked_twice_is_already_revoked_the_second_time_and_keeps_its_time(app: TestApp) {
    let secret = app.new_key("acme").await;
    let id = TestApp::key_id(&secret);

    let first = app.store.revoke_api_key(&id).await.unwrap();
    let first_time = revoked_at(&app, &id).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = app.store.revoke_api_key(&id).await.unwrap();

    assert_eq!(first, Revocation::Revoked);
    assert_eq!(second, Revocation::AlreadyRevoked);
    assert!(first_time.is_some());
    assert_eq!(revoked_at(&app, &id).await, first_time);
}

async fn a_key_revoked_by_eight_callers_at_once_is_revoked_by_exactly_one(app: TestApp) {
    let secret = app.new_key("acme").await;
    let id = TestApp::key_id(&secret);

    let revocations =
        futures::future::join_all((0..8).map(|_| app.store.revoke_api_key(&id))).await;

    let outcomes: Vec<Revocation> = revocations.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == Revocation::Revoked)
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == Revocation::AlreadyRevoked)
            .count(),
        7,
        "{outcomes:?}"
    );
}

async fn revoking_an_unknown_key_id_finds_nothing(app: TestApp) {
    let revocation = app
        .store
        .revoke_api_key("key_0000000000000000")
        .await
        .unwrap();

    assert_eq!(revocation, Revocation::NotFound);
}

async fn revoked_at(app: &TestApp, id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let keys = app.store.list_api_keys(None).await.unwrap();
    keys.into_iter()
        .find(|k| k.id == id)
        .expect("the key is listed")
        .revoked_at
}
