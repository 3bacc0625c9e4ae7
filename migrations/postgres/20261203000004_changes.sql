-- Issue 14: the outbox. One row per change of an entry (create, update,
-- delete, erasure, retention), written in the change's own transaction; the
-- changes feed reads it and webhook deliveries are made from it. Purged
-- after CHANGE_RETENTION_DAYS.
create table changes (
    -- Insertion order: breaks ties between equal occurred_at values.
    seq         bigint generated always as identity primary key,
    tenant      text not null,
    kind        text not null check (kind in ('completions', 'responses')),
    output_id   text not null,
    -- The end user the entry was recorded for; null = tenant-wide.
    end_user    text,
    type        text not null
                check (type in ('feedback.created', 'feedback.updated', 'feedback.deleted')),
    -- The entry after the change, as the API serialises it (JSON text);
    -- null for deletes and, after an erasure, for every change of that end user.
    entry       text,
    -- Taken after the write announced a lower bound of it (see
    -- SETTLED_HORIZON_SQL in src/store/postgres.rs): the feed's order is
    -- (occurred_at, seq).
    occurred_at timestamptz not null
);
-- The feed of a tenant, and of one end user (also what an erasure strips).
create index changes_feed on changes (tenant, occurred_at, seq);
create index changes_end_user on changes (tenant, end_user, occurred_at, seq)
    where end_user is not null;
-- The purge walks changes by age.
create index changes_occurred on changes (occurred_at);
