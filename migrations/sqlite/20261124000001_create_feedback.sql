-- Feedback entries: one end user's verdict on one LLM output.
-- Same shape as the PostgreSQL schema; timestamps are integer milliseconds
-- since the Unix epoch (UTC), which sort and compare exactly.
create table feedback (
    -- Stable insertion order: breaks ties between equal created_at values.
    seq         integer primary key autoincrement,
    tenant      text not null,
    kind        text not null check (kind in ('completions', 'responses')),
    output_id   text not null,
    -- The X-On-Behalf-Of end user the entry was recorded for; null = tenant-wide.
    end_user    text,
    rating      text check (rating in ('thumbs_up', 'thumbs_down')),
    description text,
    model       text,
    created_at  integer not null,
    updated_at  integer not null,
    -- Each output receives feedback at most once per tenant; creates race on this.
    constraint feedback_key unique (tenant, kind, output_id)
);

-- API keys: only the SHA-256 of the secret is kept.
create table api_keys (
    id          text primary key,
    tenant      text not null,
    name        text,
    -- The first characters of the secret, to recognise a key in listings.
    prefix      text not null,
    secret_hash text not null unique,
    created_at  integer not null,
    revoked_at  integer
);

create index api_keys_tenant on api_keys (tenant, created_at);
