-- Same shape as the PostgreSQL migration; timestamps are integer milliseconds.
-- Issue 14: the outbox. One row per change of an entry (create, update,
-- delete, erasure, retention), written in the change's own transaction; the
-- changes feed reads it and webhook deliveries are made from it. Purged
-- after CHANGE_RETENTION_DAYS.
create table changes (
    -- Insertion order, which the one writer makes commit order.
    seq         integer primary key autoincrement,
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
    -- Never below the previous change's (see the store's INSERT_CHANGE), so
    -- (occurred_at, seq) order is seq order is commit order.
    occurred_at integer not null
);
-- The feed of a tenant, and of one end user (also what an erasure strips).
create index changes_feed on changes (tenant, occurred_at, seq);
create index changes_end_user on changes (tenant, end_user, occurred_at, seq)
    where end_user is not null;
-- The purge walks changes by age.
create index changes_occurred on changes (occurred_at);
