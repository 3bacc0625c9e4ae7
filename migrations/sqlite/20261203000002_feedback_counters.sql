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
    day              integer not null,
    total            integer not null,
    thumbs_up        integer not null,
    thumbs_down      integer not null,
    unrated          integer not null,
    with_description integer not null,
    shard            integer not null default 0,
    primary key (tenant, kind, day, model, shard)
) without rowid;

insert into feedback_counters
    (tenant, kind, model, day, total, thumbs_up, thumbs_down, unrated, with_description)
select tenant, kind, coalesce(model, ''),
       created_at / 86400000,
       count(*),
       count(case when rating = 'thumbs_up' then 1 end),
       count(case when rating = 'thumbs_down' then 1 end),
       count(*) - count(rating),
       count(description)
from feedback
group by 1, 2, 3, 4;
