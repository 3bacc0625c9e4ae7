-- Admin keys (`keys create --admin`) belong to no tenant. SQLite cannot drop
-- a NOT NULL constraint: the table is rebuilt, rows and index unchanged.
create table api_keys_rebuilt (
    id          text primary key,
    -- null for an admin key.
    tenant      text,
    name        text,
    -- The first characters of the secret, to recognise a key in listings.
    prefix      text not null,
    secret_hash text not null unique,
    created_at  integer not null,
    revoked_at  integer
);
insert into api_keys_rebuilt (id, tenant, name, prefix, secret_hash, created_at, revoked_at)
    select id, tenant, name, prefix, secret_hash, created_at, revoked_at from api_keys;
drop table api_keys;
alter table api_keys_rebuilt rename to api_keys;
create index api_keys_tenant on api_keys (tenant, created_at);

-- Admin exports: same shape as the PostgreSQL table (timestamps in integer
-- milliseconds since the epoch).
create table export_jobs (
    id               text primary key,
    status           text not null check (status in ('RUNNING', 'COMPLETED', 'FAILED')),
    owner            text not null,
    started_at       integer not null,
    heartbeat_at     integer not null,
    closed_at        integer,
    stage            text not null,
    message          text not null,
    completion_count integer not null default 0,
    response_count   integer not null default 0,
    parquet_bytes    integer not null default 0,
    output_path      text,
    completions_file text,
    responses_file   text,
    duration_ms      integer,
    error            text
);

create unique index export_jobs_one_running on export_jobs (status) where status = 'RUNNING';
create index export_jobs_started on export_jobs (started_at);
