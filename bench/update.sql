-- The statement of PUT /{kind}/{id} (src/store/sql.rs, PostgreSQL dialect) on a preloaded entry.
\set n random(1, :rows)
update feedback set
    rating = case when true then 'thumbs_down' else rating end,
    description = case when false then null else description end,
    updated_at = greatest(date_trunc('milliseconds', now()), updated_at)
where tenant = 'default' and kind = 'responses' and output_id = 'pre-' || :n
  and (null::text is null or end_user = null)
returning seq, output_id, kind, rating, description, model, end_user, created_at, updated_at;
