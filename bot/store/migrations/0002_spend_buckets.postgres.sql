-- 0002 for PostgreSQL: the running totals per 15-minute bucket of 0002_spend_buckets.sql. The bucket of a
-- line is floor(created_at / 900) * 900, the expression the PostgreSQL dialect uses in bot/store/sql.py.
-- The fresh schema has no ledger lines yet, so there is nothing to backfill.

CREATE TABLE member_buckets (
    guild_id BIGINT NOT NULL,
    user_id  BIGINT NOT NULL,
    bucket   BIGINT NOT NULL,
    captured BIGINT NOT NULL DEFAULT 0,
    adjusted BIGINT NOT NULL DEFAULT 0,  -- grants − deductions
    PRIMARY KEY (guild_id, user_id, bucket)
);

-- A server's bucket is split into 16 slots (by member), so that concurrent captures by different members
-- do not all wait for one row lock; the shared queries sum every row of a bucket either way.
CREATE TABLE guild_buckets (
    guild_id BIGINT NOT NULL,
    bucket   BIGINT NOT NULL,
    slot     SMALLINT NOT NULL DEFAULT 0,
    captured BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (guild_id, bucket, slot)
);

CREATE FUNCTION ledger_buckets() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    line_bucket BIGINT := CAST(floor(NEW.created_at / 900) AS BIGINT) * 900;
BEGIN
    INSERT INTO member_buckets AS b (guild_id, user_id, bucket, captured, adjusted)
    VALUES (NEW.guild_id, NEW.user_id, line_bucket,
            CASE NEW.kind WHEN 'capture' THEN NEW.amount ELSE 0 END,
            CASE NEW.kind WHEN 'grant' THEN NEW.amount WHEN 'deduct' THEN -NEW.amount ELSE 0 END)
    ON CONFLICT (guild_id, user_id, bucket) DO UPDATE
    SET captured = b.captured + excluded.captured, adjusted = b.adjusted + excluded.adjusted;
    IF NEW.kind = 'capture' THEN
        INSERT INTO guild_buckets AS b (guild_id, bucket, slot, captured)
        VALUES (NEW.guild_id, line_bucket, NEW.user_id % 16, NEW.amount)
        ON CONFLICT (guild_id, bucket, slot) DO UPDATE SET captured = b.captured + excluded.captured;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_buckets AFTER INSERT ON ledger FOR EACH ROW
    WHEN (NEW.kind IN ('capture', 'grant', 'deduct')) EXECUTE FUNCTION ledger_buckets();
