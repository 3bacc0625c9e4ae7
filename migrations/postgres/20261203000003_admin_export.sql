-- Admin keys (`keys create --admin`) belong to no tenant.
alter table api_keys alter column tenant drop not null;

-- Admin exports (POST /export): one row per export, the running one's
-- progress kept up to date by the replica that runs it, so that every
-- replica answers GET /export/status alike.
create table export_jobs (
    id               text primary key,
    status           text not null check (status in ('RUNNING', 'COMPLETED', 'FAILED')),
    -- The process running it (a random id per start).
    owner            text not null,
    started_at       timestamptz not null,
    -- Refreshed while the export runs: a RUNNING row whose heartbeat is older
    -- than the lease belongs to a process that died, and is marked FAILED.
    heartbeat_at     timestamptz not null,
    closed_at        timestamptz,
    stage            text not null,
    message          text not null,
    completion_count bigint not null default 0,
    response_count   bigint not null default 0,
    parquet_bytes    bigint not null default 0,
    output_path      text,
    completions_file text,
    responses_file   text,
    duration_ms      bigint,
    error            text
);

-- One export at a time across all replicas: a second RUNNING row conflicts.
create unique index export_jobs_one_running on export_jobs (status) where status = 'RUNNING';
create index export_jobs_started on export_jobs (started_at);
