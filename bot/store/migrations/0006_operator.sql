-- 0006 (portable, both databases): the operator's seat. Per-server settings the operator owns (a cap above the server's own budget,
-- approval for GUILD_ACCESS=allowlist) and the server's log channel (set by its admins); alerts already
-- sent (one per incident or threshold, across restarts and processes); indexes for the bot-wide sums that
-- the global daily and monthly caps add to the guard of every hold.

CREATE TABLE guild_ops (
    guild_id       BIGINT PRIMARY KEY,
    cap_amount     BIGINT CHECK (cap_amount IS NULL OR cap_amount >= 0),
    cap_period     TEXT CHECK (cap_period IN ('day', 'week', 'month')),
    approved       INTEGER NOT NULL DEFAULT 0,
    log_channel_id BIGINT,
    updated_at     DOUBLE PRECISION,
    CHECK ((cap_amount IS NULL) = (cap_period IS NULL))
);

CREATE TABLE alerts_sent (
    key     TEXT PRIMARY KEY,
    sent_at DOUBLE PRECISION NOT NULL
);

-- Bot-wide sums since a period start: captured buckets of every server, the first partial bucket's
-- capture lines, and every active hold.
CREATE INDEX guild_buckets_bucket ON guild_buckets (bucket, captured);
CREATE INDEX ledger_kind_time ON ledger (kind, created_at, amount);
CREATE INDEX holds_active_all ON holds (amount) WHERE state = 'held';
