-- The statement of GET /{kind}/{id} (src/store/sql.rs) on a preloaded entry.
\set n random(1, :rows)
select seq, output_id, kind, rating, description, model, end_user, created_at, updated_at
from feedback
where tenant = 'default' and kind = 'responses' and output_id = 'pre-' || :n
  and (null::text is null or end_user = null);
