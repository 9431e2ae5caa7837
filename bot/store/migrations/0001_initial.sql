-- 0001: the whole first schema. Times are epoch seconds (REAL, UTC); ids from Discord are INTEGER.
-- Money tables are written only through bot/store/sqlite.py, always in one transaction per change.

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    guild_id          INTEGER NOT NULL,
    channel_id        INTEGER NOT NULL,
    user_id           INTEGER NOT NULL,
    model             TEXT    NOT NULL,
    prompt            TEXT    NOT NULL,
    count             INTEGER NOT NULL CHECK (count >= 1),
    price             INTEGER NOT NULL CHECK (price >= 0),
    params            TEXT    NOT NULL DEFAULT '{}',  -- JSON: exactly what is sent to the gateway
    options           TEXT    NOT NULL DEFAULT '{}',  -- JSON: the member's choices
    mode              TEXT    NOT NULL CHECK (mode IN ('sync', 'async')),
    status            TEXT    NOT NULL
                      CHECK (status IN ('queued', 'submitting', 'polling', 'delivering',
                                        'delivered', 'failed', 'cancelled')),
    hold_amount       INTEGER NOT NULL CHECK (hold_amount >= 0),
    locale            TEXT    NOT NULL DEFAULT 'en',
    application_id    INTEGER,
    interaction_token TEXT,
    token_expires_at  REAL,
    reply_message_id  INTEGER,
    upload_limit      INTEGER,                        -- the interaction's attachment size limit, bytes
    operation_id      TEXT,
    error_key         TEXT,
    error_detail      TEXT,
    delivered_count   INTEGER NOT NULL DEFAULT 0 CHECK (delivered_count >= 0),
    charged           INTEGER NOT NULL DEFAULT 0 CHECK (charged >= 0 AND charged <= hold_amount),
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    created_at        REAL    NOT NULL,
    started_at        REAL,
    submitted_at      REAL,
    completed_at      REAL,
    finished_at       REAL
);
CREATE INDEX jobs_active ON jobs (created_at)
    WHERE status IN ('queued', 'submitting', 'polling', 'delivering');
CREATE INDEX jobs_member ON jobs (guild_id, user_id, created_at);

-- One hold per job, settled exactly once: the state moves from 'held' and never back. The hold row is
-- written before its job row, in the same transaction (the foreign key is checked at COMMIT).
CREATE TABLE holds (
    job_id     TEXT    PRIMARY KEY REFERENCES jobs (id) DEFERRABLE INITIALLY DEFERRED,
    guild_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    model      TEXT    NOT NULL,
    amount     INTEGER NOT NULL CHECK (amount >= 0),
    state      TEXT    NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'captured', 'released')),
    captured   INTEGER NOT NULL DEFAULT 0 CHECK (captured >= 0),
    released   INTEGER NOT NULL DEFAULT 0 CHECK (released >= 0),
    created_at REAL    NOT NULL,
    settled_at REAL,
    CHECK (state = 'held' OR captured + released = amount)
);
-- Covering partial indexes: the guard of every new hold sums these.
CREATE INDEX holds_active_member ON holds (guild_id, user_id, amount) WHERE state = 'held';
CREATE INDEX holds_active_guild ON holds (guild_id, amount) WHERE state = 'held';

-- Append-only: amounts are positive, the kind gives the sign.
CREATE TABLE ledger (
    id         INTEGER PRIMARY KEY,
    guild_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('hold', 'capture', 'release', 'grant', 'deduct')),
    amount     INTEGER NOT NULL CHECK (amount > 0),
    job_id     TEXT    REFERENCES jobs (id) DEFERRABLE INITIALLY DEFERRED,
    actor_id   INTEGER,
    reason     TEXT,
    model      TEXT,
    created_at REAL    NOT NULL
);
-- Covering indexes for the period sums (member and server).
CREATE INDEX ledger_member_period ON ledger (guild_id, user_id, kind, created_at, amount);
CREATE INDEX ledger_guild_period ON ledger (guild_id, kind, created_at, amount);
CREATE INDEX ledger_guild_time ON ledger (guild_id, created_at);
-- A job has at most one hold, one capture and one release line: nothing is ever captured twice.
CREATE UNIQUE INDEX ledger_job_kind ON ledger (job_id, kind) WHERE job_id IS NOT NULL;

-- The ledger lines of a job are written by the database from its hold, in the statement that moves
-- the hold: a hold and its lines can never disagree, whatever code changes them.
CREATE TRIGGER holds_entry_on_hold AFTER INSERT ON holds
WHEN NEW.amount > 0
BEGIN
    INSERT INTO ledger (guild_id, user_id, kind, amount, job_id, actor_id, model, created_at)
    VALUES (NEW.guild_id, NEW.user_id, 'hold', NEW.amount, NEW.job_id, NEW.user_id, NEW.model, NEW.created_at);
END;

CREATE TRIGGER holds_entries_on_settle AFTER UPDATE OF state ON holds
WHEN OLD.state = 'held' AND NEW.state <> 'held'
BEGIN
    INSERT INTO ledger (guild_id, user_id, kind, amount, job_id, actor_id, reason, model, created_at)
    SELECT NEW.guild_id, NEW.user_id, 'capture', NEW.captured, NEW.job_id, NEW.user_id,
           (SELECT status FROM jobs WHERE id = NEW.job_id), NEW.model, NEW.settled_at
    WHERE NEW.captured > 0;
    INSERT INTO ledger (guild_id, user_id, kind, amount, job_id, actor_id, reason, model, created_at)
    SELECT NEW.guild_id, NEW.user_id, 'release', NEW.released, NEW.job_id, NEW.user_id,
           (SELECT status FROM jobs WHERE id = NEW.job_id), NEW.model, NEW.settled_at
    WHERE NEW.released > 0;
END;

-- A job that becomes terminal settles its hold in the same statement: DELIVERED captures what it charged
-- and releases the rest; FAILED and CANCELLED charge nothing. A job without an open hold cannot finish.
CREATE TRIGGER jobs_settle_hold AFTER UPDATE OF status ON jobs
WHEN OLD.status IN ('queued', 'submitting', 'polling', 'delivering')
 AND NEW.status IN ('delivered', 'failed', 'cancelled')
BEGIN
    SELECT RAISE(ABORT, 'job has no open hold')
    WHERE NOT EXISTS (SELECT 1 FROM holds WHERE job_id = NEW.id AND state = 'held' AND amount >= NEW.charged);
    UPDATE holds
    SET state = CASE WHEN NEW.charged > 0 THEN 'captured' ELSE 'released' END,
        captured = NEW.charged,
        released = amount - NEW.charged,
        settled_at = NEW.finished_at
    WHERE job_id = NEW.id AND state = 'held';
END;

-- Terminal is final.
CREATE TRIGGER jobs_terminal_is_final BEFORE UPDATE ON jobs
WHEN OLD.status IN ('delivered', 'failed', 'cancelled')
BEGIN
    SELECT RAISE(ABORT, 'a finished job cannot change');
END;

CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;

-- An allowance is (amount, period); amount NULL means unlimited. A missing row means "not set".
CREATE TABLE guild_policy (
    guild_id                  INTEGER PRIMARY KEY,
    timezone                  TEXT    NOT NULL DEFAULT 'UTC',
    default_allowance_amount  INTEGER,
    default_allowance_period  TEXT CHECK (default_allowance_period IN ('day', 'week', 'month', 'unlimited')),
    budget_amount             INTEGER,
    budget_period             TEXT CHECK (budget_period IN ('day', 'week', 'month', 'unlimited')),
    default_model             TEXT,
    quote_threshold           INTEGER,
    models_allowed_by_default INTEGER NOT NULL DEFAULT 1,
    updated_at                REAL
);

CREATE TABLE model_rules (
    guild_id INTEGER NOT NULL,
    model    TEXT    NOT NULL,
    allowed  INTEGER NOT NULL,
    PRIMARY KEY (guild_id, model)
);

CREATE TABLE role_allowances (
    guild_id INTEGER NOT NULL,
    role_id  INTEGER NOT NULL,
    amount   INTEGER,
    period   TEXT    NOT NULL CHECK (period IN ('day', 'week', 'month', 'unlimited')),
    PRIMARY KEY (guild_id, role_id)
);

CREATE TABLE member_allowances (
    guild_id INTEGER NOT NULL,
    user_id  INTEGER NOT NULL,
    amount   INTEGER,
    period   TEXT    NOT NULL CHECK (period IN ('day', 'week', 'month', 'unlimited')),
    PRIMARY KEY (guild_id, user_id)
);

CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY,
    guild_id   INTEGER NOT NULL,
    actor_id   INTEGER NOT NULL,
    action     TEXT    NOT NULL,
    detail     TEXT    NOT NULL DEFAULT '{}',  -- JSON
    created_at REAL    NOT NULL
);
CREATE INDEX audit_log_guild ON audit_log (guild_id, id);

CREATE TABLE blocked_terms (
    id         INTEGER PRIMARY KEY,
    guild_id   INTEGER NOT NULL,
    pattern    TEXT    NOT NULL,
    is_regex   INTEGER NOT NULL DEFAULT 0,
    created_by INTEGER NOT NULL,
    created_at REAL    NOT NULL
);
CREATE INDEX blocked_terms_guild ON blocked_terms (guild_id);

-- Submit-to-completion times of async jobs, for adaptive polling; only the newest ~100 per model are kept.
CREATE TABLE model_durations (
    id          INTEGER PRIMARY KEY,
    model       TEXT NOT NULL,
    seconds     REAL NOT NULL,
    recorded_at REAL NOT NULL
);
CREATE INDEX model_durations_model ON model_durations (model, id);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
