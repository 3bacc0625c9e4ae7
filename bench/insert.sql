-- The statement of POST /{kind} (src/store/sql.rs, PostgreSQL dialect), with a unique id:
-- it announces its position (the `position` fragment) before taking it.
\set n random(1, 9000000000000000000)
with announced as materialized (
    select date_trunc('milliseconds', clock_timestamp()) as lower_bound
), held as materialized (
    select lower_bound,
           pg_advisory_xact_lock_shared(
               (19526::bigint << 48) + (extract(epoch from lower_bound) * 1000)::bigint)
    from announced
), position as (
    select greatest(date_trunc('milliseconds', clock_timestamp()), lower_bound) as created_at
    from held
)
insert into feedback
    (tenant, kind, output_id, end_user, rating, description, model, created_at, updated_at)
select 'default', 'responses', 'pgb-' || :client_id || '-' || :n, null, 'thumbs_up',
       'Helpful answer, thanks.', 'gpt-4o', position.created_at, position.created_at
from position
on conflict (tenant, kind, output_id) do nothing
returning seq, output_id, kind, rating, description, model, end_user, created_at, updated_at;
