-- The secret that signs feedback tokens (HMAC-SHA256), one row: whichever
-- replica starts first inserts it (`on conflict do nothing`), every replica
-- then reads the same one and caches it. Deleting the row (and restarting
-- every replica) rotates it: every token issued so far stops working.
create table token_signing_key (
    id         integer primary key check (id = 1),
    -- 32 random bytes, hex.
    secret     text not null
);
