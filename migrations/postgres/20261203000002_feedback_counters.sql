-- Per-(tenant, kind, model, day) counts of entries, kept in the same
-- transaction as every write (see `adjust_counters` in src/store/backend.rs),
-- so that GET /stats reads whole days from here instead of scanning entries.
-- `model` is '' for entries without one; `day` is the UTC day of created_at,
-- as whole days since the Unix epoch (the same integer in both stores).
-- Each (tenant, kind, model, day) is spread over 16 rows by `shard` (the
-- entry's seq modulo 16), so that concurrent writes of one day and model do
-- not all wait on one row lock until they commit; GET /stats sums the shards.
create table feedback_counters (
    tenant           text not null,
    kind             text not null,
    model            text not null,
    day              bigint not null,
    total            bigint not null,
    thumbs_up        bigint not null,
    thumbs_down      bigint not null,
    unrated          bigint not null,
    with_description bigint not null,
    shard            smallint not null default 0,
    primary key (tenant, kind, day, model, shard)
);

insert into feedback_counters
    (tenant, kind, model, day, total, thumbs_up, thumbs_down, unrated, with_description)
select tenant, kind, coalesce(model, ''),
       floor(extract(epoch from created_at) / 86400)::bigint,
       count(*),
       count(*) filter (where rating = 'thumbs_up'),
       count(*) filter (where rating = 'thumbs_down'),
       count(*) filter (where rating is null),
       count(*) filter (where description is not null)
from feedback
group by 1, 2, 3, 4;
