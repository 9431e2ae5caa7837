-- 0008 (portable: SQLite and PostgreSQL run this same file): job ownership by lease, and the heartbeats of
-- the bot processes sharing the database. A job with an owner is running in that process; the owner
-- renews lease_expires_at, and another process may take the job over once it has passed.
ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires_at DOUBLE PRECISION;
CREATE INDEX jobs_owned ON jobs (owner, lease_expires_at)
    WHERE owner IS NOT NULL AND status IN ('queued', 'submitting', 'polling', 'delivering');

CREATE TABLE processes (
    process_id TEXT PRIMARY KEY,
    shards     TEXT NOT NULL DEFAULT '',  -- comma-separated shard ids
    version    TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    last_seen  DOUBLE PRECISION NOT NULL
);
CREATE INDEX processes_last_seen ON processes (last_seen);
