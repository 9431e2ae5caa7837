-- 0001 for PostgreSQL: the same tables as 0001_initial.sql (SQLite), with PostgreSQL's types (BIGINT ids,
-- DOUBLE PRECISION epoch seconds) and its trigger language. `rowid` stands in for SQLite's implicit row
-- number, so the shared queries can order by insertion the same way in both.

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    rowid             BIGSERIAL NOT NULL,
    guild_id          BIGINT NOT NULL,
    channel_id        BIGINT NOT NULL,
    user_id           BIGINT NOT NULL,
    model             TEXT   NOT NULL,
    prompt            TEXT   NOT NULL,
    count             BIGINT NOT NULL CHECK (count >= 1),
    price             BIGINT NOT NULL CHECK (price >= 0),
    params            TEXT   NOT NULL DEFAULT '{}',
    options           TEXT   NOT NULL DEFAULT '{}',
    mode              TEXT   NOT NULL CHECK (mode IN ('sync', 'async')),
    status            TEXT   NOT NULL
                      CHECK (status IN ('queued', 'submitting', 'polling', 'delivering',
                                        'delivered', 'failed', 'cancelled')),
    hold_amount       BIGINT NOT NULL CHECK (hold_amount >= 0),
    locale            TEXT   NOT NULL DEFAULT 'en',
    application_id    BIGINT,
    interaction_token TEXT,
    token_expires_at  DOUBLE PRECISION,
    reply_message_id  BIGINT,
    upload_limit      BIGINT,
    operation_id      TEXT,
    error_key         TEXT,
    error_detail      TEXT,
    delivered_count   BIGINT NOT NULL DEFAULT 0 CHECK (delivered_count >= 0),
    charged           BIGINT NOT NULL DEFAULT 0 CHECK (charged >= 0 AND charged <= hold_amount),
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    created_at        DOUBLE PRECISION NOT NULL,
    started_at        DOUBLE PRECISION,
    submitted_at      DOUBLE PRECISION,
    completed_at      DOUBLE PRECISION,
    finished_at       DOUBLE PRECISION
);
CREATE INDEX jobs_active ON jobs (created_at, rowid)
    WHERE status IN ('queued', 'submitting', 'polling', 'delivering');
CREATE INDEX jobs_member ON jobs (guild_id, user_id, created_at);

CREATE TABLE holds (
    job_id     TEXT   PRIMARY KEY REFERENCES jobs (id) DEFERRABLE INITIALLY DEFERRED,
    guild_id   BIGINT NOT NULL,
    user_id    BIGINT NOT NULL,
    model      TEXT   NOT NULL,
    amount     BIGINT NOT NULL CHECK (amount >= 0),
    state      TEXT   NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'captured', 'released')),
    captured   BIGINT NOT NULL DEFAULT 0 CHECK (captured >= 0),
    released   BIGINT NOT NULL DEFAULT 0 CHECK (released >= 0),
    created_at DOUBLE PRECISION NOT NULL,
    settled_at DOUBLE PRECISION,
    CHECK (state = 'held' OR captured + released = amount)
);
CREATE INDEX holds_active_member ON holds (guild_id, user_id) INCLUDE (amount) WHERE state = 'held';
CREATE INDEX holds_active_guild ON holds (guild_id) INCLUDE (amount) WHERE state = 'held';

CREATE TABLE ledger (
    id         BIGSERIAL PRIMARY KEY,
    guild_id   BIGINT NOT NULL,
    user_id    BIGINT NOT NULL,
    kind       TEXT   NOT NULL CHECK (kind IN ('hold', 'capture', 'release', 'grant', 'deduct')),
    amount     BIGINT NOT NULL CHECK (amount > 0),
    job_id     TEXT   REFERENCES jobs (id) DEFERRABLE INITIALLY DEFERRED,
    actor_id   BIGINT,
    reason     TEXT,
    model      TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX ledger_member_period ON ledger (guild_id, user_id, kind, created_at) INCLUDE (amount);
CREATE INDEX ledger_guild_period ON ledger (guild_id, kind, created_at) INCLUDE (amount);
CREATE INDEX ledger_guild_time ON ledger (guild_id, created_at);
CREATE UNIQUE INDEX ledger_job_kind ON ledger (job_id, kind) WHERE job_id IS NOT NULL;

CREATE FUNCTION holds_entry_on_hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.amount > 0 THEN
        INSERT INTO ledger (guild_id, user_id, kind, amount, job_id, actor_id, model, created_at)
        VALUES (NEW.guild_id, NEW.user_id, 'hold', NEW.amount, NEW.job_id, NEW.user_id, NEW.model, NEW.created_at);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER holds_entry_on_hold AFTER INSERT ON holds FOR EACH ROW EXECUTE FUNCTION holds_entry_on_hold();

CREATE FUNCTION holds_entries_on_settle() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    job_status TEXT := (SELECT status FROM jobs WHERE id = NEW.job_id);
BEGIN
    IF NEW.captured > 0 THEN
        INSERT INTO ledger (guild_id, user_id, kind, amount, job_id, actor_id, reason, model, created_at)
        VALUES (NEW.guild_id, NEW.user_id, 'capture', NEW.captured, NEW.job_id, NEW.user_id, job_status,
                NEW.model, NEW.settled_at);
    END IF;
    IF NEW.released > 0 THEN
        INSERT INTO ledger (guild_id, user_id, kind, amount, job_id, actor_id, reason, model, created_at)
        VALUES (NEW.guild_id, NEW.user_id, 'release', NEW.released, NEW.job_id, NEW.user_id, job_status,
                NEW.model, NEW.settled_at);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER holds_entries_on_settle AFTER UPDATE OF state ON holds FOR EACH ROW
    WHEN (OLD.state = 'held' AND NEW.state <> 'held') EXECUTE FUNCTION holds_entries_on_settle();

CREATE FUNCTION jobs_settle_hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE holds
    SET state = CASE WHEN NEW.charged > 0 THEN 'captured' ELSE 'released' END,
        captured = NEW.charged,
        released = amount - NEW.charged,
        settled_at = NEW.finished_at
    WHERE job_id = NEW.id AND state = 'held' AND amount >= NEW.charged;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job has no open hold';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_settle_hold AFTER UPDATE OF status ON jobs FOR EACH ROW
    WHEN (OLD.status IN ('queued', 'submitting', 'polling', 'delivering')
          AND NEW.status IN ('delivered', 'failed', 'cancelled'))
    EXECUTE FUNCTION jobs_settle_hold();

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER jobs_terminal_is_final BEFORE UPDATE ON jobs FOR EACH ROW
    WHEN (OLD.status IN ('delivered', 'failed', 'cancelled'))
    EXECUTE FUNCTION refuse_change('a finished job cannot change');
-- Append-only, refused by the database whatever the client: row updates, deletes and TRUNCATE.
CREATE TRIGGER ledger_no_update BEFORE UPDATE OR DELETE ON ledger FOR EACH ROW
    EXECUTE FUNCTION refuse_change('the ledger is append-only');
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger FOR EACH STATEMENT
    EXECUTE FUNCTION refuse_change('the ledger is append-only');

CREATE TABLE guild_policy (
    guild_id                  BIGINT PRIMARY KEY,
    timezone                  TEXT   NOT NULL DEFAULT 'UTC',
    default_allowance_amount  BIGINT,
    default_allowance_period  TEXT CHECK (default_allowance_period IN ('day', 'week', 'month', 'unlimited')),
    budget_amount             BIGINT,
    budget_period             TEXT CHECK (budget_period IN ('day', 'week', 'month', 'unlimited')),
    default_model             TEXT,
    quote_threshold           BIGINT,
    models_allowed_by_default INTEGER NOT NULL DEFAULT 1,
    updated_at                DOUBLE PRECISION
);

CREATE TABLE model_rules (
    guild_id BIGINT  NOT NULL,
    model    TEXT    NOT NULL,
    allowed  INTEGER NOT NULL,
    PRIMARY KEY (guild_id, model)
);

CREATE TABLE role_allowances (
    guild_id BIGINT NOT NULL,
    role_id  BIGINT NOT NULL,
    amount   BIGINT,
    period   TEXT   NOT NULL CHECK (period IN ('day', 'week', 'month', 'unlimited')),
    PRIMARY KEY (guild_id, role_id)
);

CREATE TABLE member_allowances (
    guild_id BIGINT NOT NULL,
    user_id  BIGINT NOT NULL,
    amount   BIGINT,
    period   TEXT   NOT NULL CHECK (period IN ('day', 'week', 'month', 'unlimited')),
    PRIMARY KEY (guild_id, user_id)
);

CREATE TABLE audit_log (
    id         BIGSERIAL PRIMARY KEY,
    guild_id   BIGINT NOT NULL,
    actor_id   BIGINT NOT NULL,
    action     TEXT   NOT NULL,
    detail     TEXT   NOT NULL DEFAULT '{}',
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX audit_log_guild ON audit_log (guild_id, id);

CREATE TABLE blocked_terms (
    id         BIGSERIAL PRIMARY KEY,
    guild_id   BIGINT  NOT NULL,
    pattern    TEXT    NOT NULL,
    is_regex   INTEGER NOT NULL DEFAULT 0,
    created_by BIGINT  NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX blocked_terms_guild ON blocked_terms (guild_id);

CREATE TABLE model_durations (
    id          BIGSERIAL PRIMARY KEY,
    model       TEXT NOT NULL,
    seconds     DOUBLE PRECISION NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX model_durations_model ON model_durations (model, id);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
