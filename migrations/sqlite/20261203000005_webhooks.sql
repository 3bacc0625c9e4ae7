-- Same shape as the PostgreSQL migration; timestamps are integer milliseconds.
-- Issue 14, webhooks (Standard Webhooks v1): the endpoints a tenant
-- registered and one delivery row per (endpoint, change). A delivery is
-- inserted in the transaction of the change it carries (`enqueue` after the
-- outbox row, src/store/backend.rs), so a committed change is never lost and
-- a rolled-back one never sent. It holds no payload: the body is built at
-- send time from the `changes` row, so an erasure that strips a change's
-- `entry` strips what is still to be delivered too.

create table webhook_endpoints (
    -- `wh_…`
    id          text primary key,
    tenant      text not null,
    url         text not null,
    -- The subscribed event types, comma-separated (`feedback.created,...`).
    events      text not null,
    -- `whsec_` + base64 of 32 random bytes; shown once, at creation.
    secret      text not null,
    created_at  integer not null,
    -- Set when a receiver answered 410: nothing more is sent to it.
    disabled_at integer
);
create index webhook_endpoints_tenant on webhook_endpoints (tenant, created_at);

create table webhook_deliveries (
    id               integer primary key autoincrement,
    endpoint_id      text not null references webhook_endpoints (id) on delete cascade,
    -- `changes.seq` of the change it carries.
    change_seq       integer not null,
    -- `msg_…`: the `webhook-id` header, the same on every attempt.
    event_id         text not null,
    event_type       text not null,
    -- 'pending', 'delivered' or 'failed'.
    status           text not null default 'pending',
    attempts         integer not null default 0,
    -- When the next attempt is due (pending only).
    next_attempt_at  integer,
    -- A replica that claims a delivery holds it until `locked_until`; one
    -- that crashes mid-attempt lets it go when the lease runs out. The token
    -- names the claim, so a late answer of an expired claim is not recorded.
    locked_until     integer,
    lease_token      text,
    last_status_code integer,
    last_error       text,
    created_at       integer not null,
    unique (endpoint_id, change_seq)
);
-- What the delivery worker claims: pending rows by due time.
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at) where status = 'pending';
-- An endpoint's deliveries, newest first.
create index webhook_deliveries_endpoint on webhook_deliveries (endpoint_id, id);
create index webhook_deliveries_lease on webhook_deliveries (lease_token);
