-- 0002: running totals per 15-minute bucket, kept by a trigger on the ledger, so that the sums behind
-- every hold read at most a few thousand rows a month instead of every ledger line of the period.
-- Every UTC offset in use is a whole number of quarter hours, so a local midnight starts a bucket; a period
-- that starts inside a bucket is still summed exactly (the store reads the lines of that first partial
-- bucket one by one). The bucket of a line is CAST(created_at / 900 AS INTEGER) * 900, here and in the store.

CREATE TABLE member_buckets (
    guild_id INTEGER NOT NULL,
    user_id  INTEGER NOT NULL,
    bucket   INTEGER NOT NULL,
    captured INTEGER NOT NULL DEFAULT 0,
    adjusted INTEGER NOT NULL DEFAULT 0,  -- grants − deductions
    PRIMARY KEY (guild_id, user_id, bucket)
) WITHOUT ROWID;

CREATE TABLE guild_buckets (
    guild_id INTEGER NOT NULL,
    bucket   INTEGER NOT NULL,
    captured INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (guild_id, bucket)
) WITHOUT ROWID;

INSERT INTO member_buckets (guild_id, user_id, bucket, captured, adjusted)
SELECT guild_id, user_id, CAST(created_at / 900 AS INTEGER) * 900,
       sum(CASE kind WHEN 'capture' THEN amount ELSE 0 END),
       sum(CASE kind WHEN 'grant' THEN amount WHEN 'deduct' THEN -amount ELSE 0 END)
FROM ledger WHERE kind IN ('capture', 'grant', 'deduct')
GROUP BY 1, 2, 3;

INSERT INTO guild_buckets (guild_id, bucket, captured)
SELECT guild_id, CAST(created_at / 900 AS INTEGER) * 900, sum(amount)
FROM ledger WHERE kind = 'capture'
GROUP BY 1, 2;

CREATE TRIGGER ledger_buckets AFTER INSERT ON ledger
WHEN NEW.kind IN ('capture', 'grant', 'deduct')
BEGIN
    INSERT INTO member_buckets (guild_id, user_id, bucket, captured, adjusted)
    VALUES (NEW.guild_id, NEW.user_id, CAST(NEW.created_at / 900 AS INTEGER) * 900,
            CASE NEW.kind WHEN 'capture' THEN NEW.amount ELSE 0 END,
            CASE NEW.kind WHEN 'grant' THEN NEW.amount WHEN 'deduct' THEN -NEW.amount ELSE 0 END)
    ON CONFLICT (guild_id, user_id, bucket) DO UPDATE
    SET captured = captured + excluded.captured, adjusted = adjusted + excluded.adjusted;
    INSERT INTO guild_buckets (guild_id, bucket, captured)
    SELECT NEW.guild_id, CAST(NEW.created_at / 900 AS INTEGER) * 900, NEW.amount
    WHERE NEW.kind = 'capture'
    ON CONFLICT (guild_id, bucket) DO UPDATE SET captured = captured + excluded.captured;
END;
