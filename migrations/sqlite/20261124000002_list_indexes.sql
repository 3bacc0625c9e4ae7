-- Keyset pagination and export walk (created_at, seq) within a tenant's
-- kind; one index per filter the list API offers, each serving both orders.
create index feedback_list on feedback (tenant, kind, created_at, seq);
create index feedback_list_by_rating on feedback (tenant, kind, rating, created_at, seq);
create index feedback_list_by_end_user on feedback (tenant, kind, end_user, created_at, seq);
