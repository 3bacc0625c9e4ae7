-- Same shape as the PostgreSQL migration; timestamps are integer milliseconds.
-- Issue 13, "Writes you can trust": revision history, the revision counter
-- (the ETag), kept idempotent outcomes. Every table that holds an end user's
-- text carries `tenant` and `end_user`, so that one erasure (the store's
-- `erase_end_user`) removes it all in one transaction.

-- The entry's revision: 1 on creation, +1 on every update; the `ETag`.
alter table feedback add column revision integer not null default 1;

-- One row per successful write of an entry (create, update, delete): its
-- state after that write and who made it. A deleted entry's history stays;
-- a new create of the id continues its numbering.
create table feedback_revisions (
    tenant       text not null,
    kind         text not null,
    output_id    text not null,
    revision     integer not null,
    end_user     text,
    rating       text,
    description  text,
    deleted      boolean not null default 0,
    -- 'api_key' or 'token' ('migration' for the rows written below).
    actor_type   text not null,
    -- The key that wrote it, or that minted the token.
    actor_key_id text,
    recorded_at  integer not null,
    primary key (tenant, kind, output_id, revision)
);
create index feedback_revisions_end_user on feedback_revisions (tenant, end_user);
create index feedback_revisions_recorded on feedback_revisions (recorded_at);

-- Entries written before this migration get their first revision.
insert into feedback_revisions
    (tenant, kind, output_id, revision, end_user, rating, description, actor_type, recorded_at)
select tenant, kind, output_id, revision, end_user, rating, description, 'migration', updated_at
from feedback;

-- The outcome of a create that carried an `Idempotency-Key`, committed with
-- the entry; purged after IDEMPOTENCY_TTL_SECS.
create table idempotency_keys (
    tenant          text not null,
    idempotency_key text not null,
    end_user        text,
    -- Kind, end user and parsed body of the first request, hashed.
    fingerprint     text not null,
    status          integer not null,
    body            text not null,
    etag            text,
    created_at      integer not null,
    primary key (tenant, idempotency_key)
);
create index idempotency_keys_created on idempotency_keys (created_at);
create index idempotency_keys_end_user on idempotency_keys (tenant, end_user);

-- Retention walks entries by age.
create index feedback_created on feedback (created_at);
