-- The statement of POST /{kind} (src/store/postgres.rs), with a unique id.
\set n random(1, 9000000000000000000)
insert into feedback
    (tenant, kind, output_id, end_user, rating, description, model, created_at, updated_at)
values ('default', 'responses', 'pgb-' || :client_id || '-' || :n, null, 'thumbs_up',
        'Helpful answer, thanks.', 'gpt-4o',
        date_trunc('milliseconds', now()), date_trunc('milliseconds', now()))
on conflict (tenant, kind, output_id) do nothing
returning seq, output_id, kind, rating, description, model, end_user, created_at, updated_at;
