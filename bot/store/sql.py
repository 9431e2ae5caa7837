"""The store's SQL, written once for SQLite and PostgreSQL.

Every query is plain SQL with named parameters (`:name`), in the subset both databases accept: CTEs,
window functions, `INSERT … ON CONFLICT`, `RETURNING`, `CAST(x AS BIGINT)` (sums are cast so both return
whole numbers, and so PostgreSQL deduces one type for each parameter). The few expressions the two spell
differently (a bucket's start, JSON aggregates) come from a `Dialect`; `Queries(dialect)` fills them in.
SQLite binds `:name` natively; the PostgreSQL store rewrites it to `$n` (see `to_numbered`).

To add a query: write it here once as an attribute of `Queries` (or a module constant when it needs no
dialect fragment), and call it from `bot/store/common.py`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from functools import lru_cache

from bot.store.records import ACTIVE_STATUSES, RUNNING_STATUSES, NewJob

ACTIVE_SQL = "(" + ", ".join(f"'{status.value}'" for status in ACTIVE_STATUSES) + ")"
RUNNING_SQL = "(" + ", ".join(f"'{status.value}'" for status in RUNNING_STATUSES) + ")"
NEW_JOB_FIELDS = tuple(f.name for f in dataclass_fields(NewJob))
BUCKET_SECONDS = 900


@dataclass(frozen=True)
class Dialect:
    """The spellings that differ between the two databases, as `str.format` templates."""

    name: str
    bucket_of: str  # {x}: a time column -> the start of its 15-minute bucket, a whole number
    json_object_agg: str  # {key}, {value}: a JSON object text of the group
    json_array: str  # {items}: a JSON array text of the comma-separated expressions
    json_array_agg: str  # {item}: a JSON array text of the group ('[]' when empty)


SQLITE = Dialect(
    name="sqlite",
    bucket_of="CAST({x} / 900 AS INTEGER) * 900",
    json_object_agg="json_group_object({key}, {value})",
    json_array="json_array({items})",
    json_array_agg="json_group_array({item})",
)
POSTGRES = Dialect(
    name="postgres",
    bucket_of="CAST(floor({x} / 900) AS BIGINT) * 900",
    json_object_agg="json_object_agg({key}, {value})",  # asyncpg hands json back as its text
    json_array="json_build_array({items})",
    json_array_agg="coalesce(json_agg({item}), CAST('[]' AS JSON))",
)

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@lru_cache(maxsize=512)
def to_numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """`:name` parameters -> PostgreSQL's `$n`, and the names in `$n` order (a name used twice is one $n)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _NAMED.sub(number, sql), tuple(names)


# --- statements that need no dialect fragment ----------------------------------------------------------

# Every NewJob field is a column of the same name; the hold amount, status and time are added. The job
# row goes in only when its hold did (the guarded statement before it), so a refused hold writes nothing.
JOB_ROW = (
    f"INSERT INTO jobs ({', '.join(NEW_JOB_FIELDS)}, status, hold_amount, created_at)"
    f" SELECT {', '.join(':' + name for name in NEW_JOB_FIELDS)}, 'queued', :amount, :now"
)
INSERT_JOB = JOB_ROW + " WHERE EXISTS (SELECT 1 FROM holds WHERE job_id = :id AND created_at = :now)"
INSERT_HOLD = """
INSERT INTO holds (job_id, guild_id, user_id, model, amount, created_at)
SELECT :id, :guild_id, :user_id, :model, :amount, :now
"""
MEMBER_HELD = """
(SELECT CAST(coalesce(sum(amount), 0) AS BIGINT) FROM holds
 WHERE guild_id = :guild_id AND user_id = :user_id AND state = 'held')
"""
# Jobs queued or running: exactly the holds still held (every job has one, free jobs too). Counted in the
# guarded insert itself, so a burst of requests cannot all see room for one more.
MEMBER_JOBS = "(SELECT count(*) FROM holds WHERE guild_id = :guild_id AND user_id = :user_id AND state = 'held')"
GUILD_JOBS = "(SELECT count(*) FROM holds WHERE guild_id = :guild_id AND state = 'held')"
QUEUE_GUARD = (
    f"{MEMBER_JOBS} < CAST(:max_member_jobs AS BIGINT) AND {GUILD_JOBS} < CAST(:max_guild_jobs AS BIGINT)"
)
APPROVED = "EXISTS (SELECT 1 FROM guild_ops WHERE guild_id = :guild_id AND approved = 1)"

# One statement: the trigger jobs_settle_hold settles the hold, and holds_entries_on_settle writes the
# CAPTURE and RELEASE lines, all or nothing.
FINISH_JOB = f"""
UPDATE jobs SET
    status = :status,
    delivered_count = CASE WHEN :delivered < count THEN :delivered ELSE count END,
    charged = CASE WHEN :status = 'delivered' THEN (CASE WHEN :delivered < count THEN :delivered ELSE count END) * price
                   ELSE 0 END,
    error_key = :error_key,
    error_detail = :error_detail,
    interaction_token = NULL,  -- a secret no longer needed once the job ended
    finished_at = :now
WHERE id = :id AND status IN {ACTIVE_SQL} AND (CAST(:expect AS TEXT) IS NULL OR status = :expect)
RETURNING *
"""

AUDIT = (
    "INSERT INTO audit_log (guild_id, actor_id, action, detail, created_at)"
    " VALUES (:guild_id, :actor_id, :action, :detail, :now)"
)
GET_META = "SELECT value FROM meta WHERE key = :key"
SET_META = "INSERT INTO meta (key, value) VALUES (:key, :value) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
INSERT_ADJUSTMENT = (
    "INSERT INTO ledger (guild_id, user_id, kind, amount, actor_id, reason, created_at)"
    " VALUES (:guild_id, :user_id, :kind, :amount, :actor_id, :reason, :now) RETURNING id"
)
LEDGER_ENTRIES = (
    "SELECT * FROM ledger WHERE guild_id = :guild_id AND created_at >= :start AND created_at < :end"
    " AND (CAST(:user_id AS BIGINT) IS NULL OR user_id = :user_id) ORDER BY created_at, id"
)
USAGE_BY_MODEL = (
    "SELECT coalesce(model, ''), CAST(sum(amount) AS BIGINT) FROM ledger"
    " WHERE guild_id = :guild_id AND kind = 'capture' AND created_at >= :start"
    " AND (CAST(:user_id AS BIGINT) IS NULL OR user_id = :user_id) GROUP BY 1"
)
TOP_SPENDERS = (
    "SELECT user_id, CAST(sum(amount) AS BIGINT) AS spent FROM ledger"
    " WHERE guild_id = :guild_id AND kind = 'capture' AND created_at >= :start"
    " GROUP BY user_id ORDER BY spent DESC, user_id LIMIT :limit"
)
GET_JOB = "SELECT * FROM jobs WHERE id = :id"
# `rowid`: SQLite's implicit row number; the PostgreSQL schema has a serial column of that name.
ACTIVE_JOBS = f"SELECT * FROM jobs WHERE status IN {ACTIVE_SQL} ORDER BY created_at, rowid"
RECENT_JOBS = (
    "SELECT * FROM jobs WHERE guild_id = :guild_id AND user_id = :user_id"
    " ORDER BY created_at DESC, rowid DESC LIMIT :limit"
)
INSERT_DURATION = "INSERT INTO model_durations (model, seconds, recorded_at) VALUES (:model, :seconds, :now)"
TRIM_DURATIONS = (
    "DELETE FROM model_durations WHERE model = :model AND id <= ("
    " SELECT id FROM model_durations WHERE model = :model ORDER BY id DESC LIMIT 1 OFFSET :keep)"
)
RECENT_DURATIONS = "SELECT seconds FROM model_durations WHERE model = :model ORDER BY id DESC LIMIT :limit"
DELETE_MODEL_RULE = "DELETE FROM model_rules WHERE guild_id = :guild_id AND model = :model"
UPSERT_MODEL_RULE = (
    "INSERT INTO model_rules (guild_id, model, allowed) VALUES (:guild_id, :model, :allowed)"
    " ON CONFLICT (guild_id, model) DO UPDATE SET allowed = excluded.allowed"
)
ROLE_ALLOWANCES = "SELECT role_id, amount, period FROM role_allowances WHERE guild_id = :guild_id"
MEMBER_ALLOWANCE = "SELECT amount, period FROM member_allowances WHERE guild_id = :guild_id AND user_id = :user_id"
RECENT_AUDIT = "SELECT * FROM audit_log WHERE guild_id = :guild_id ORDER BY id DESC LIMIT :limit"
AUDIT_AFTER = "SELECT * FROM audit_log WHERE guild_id = :guild_id AND id > :after_id ORDER BY id LIMIT :limit"
BLOCKED_TERMS = "SELECT * FROM blocked_terms WHERE guild_id = :guild_id ORDER BY id"
# The count and the insert are one statement (a negative :max_terms is no cap); under PostgreSQL the
# caller also holds the server's blocklist lock, so two admins adding at once cannot pass the cap together.
ADD_BLOCKED_TERM = (
    "INSERT INTO blocked_terms (guild_id, pattern, is_regex, created_by, created_at)"
    " SELECT :guild_id, :pattern, :is_regex, :actor_id, :now"
    " WHERE CAST(:max_terms AS BIGINT) < 0"
    " OR (SELECT count(*) FROM blocked_terms WHERE guild_id = :guild_id) < CAST(:max_terms AS BIGINT)"
    " RETURNING id"
)
BLOCKLIST_VERSION = "SELECT version FROM blocklist_versions WHERE guild_id = :guild_id"
BUMP_BLOCKLIST = (
    "INSERT INTO blocklist_versions (guild_id, version) VALUES (:guild_id, 1)"
    " ON CONFLICT (guild_id) DO UPDATE SET version = blocklist_versions.version + 1"
)
REMOVE_BLOCKED_TERM = (
    "DELETE FROM blocked_terms WHERE guild_id = :guild_id AND id = :id RETURNING pattern, is_regex"
)

JOB_COUNTS = f"SELECT status, count(*) FROM jobs WHERE status IN {ACTIVE_SQL} GROUP BY status"
JOBS_PER_OWNER = f"SELECT owner, count(*) FROM jobs WHERE owner IS NOT NULL AND status IN {ACTIVE_SQL} GROUP BY owner"
SPEND_BY_GUILD_AND_MODEL = (
    "SELECT guild_id, coalesce(model, '') AS model, CAST(sum(amount) AS BIGINT) AS captured FROM ledger"
    " WHERE kind = 'capture' AND created_at >= :start GROUP BY 1, 2 ORDER BY captured DESC, guild_id, model"
)

# --- the operator's seat -------------------------------------------------------------------------------

GET_GUILD_OPS = "SELECT * FROM guild_ops WHERE guild_id = :guild_id"
ALL_GUILD_OPS = "SELECT * FROM guild_ops ORDER BY guild_id"
CLAIM_ALERT = "INSERT INTO alerts_sent (key, sent_at) VALUES (:key, :now) ON CONFLICT (key) DO NOTHING RETURNING key"

# --- member preferences, server styles and channel rules -----------------------------------------------

MEMBER_DEFAULTS = "SELECT defaults FROM member_defaults WHERE guild_id = :guild_id AND user_id = :user_id"
SET_MEMBER_DEFAULTS = (
    "INSERT INTO member_defaults (guild_id, user_id, defaults, updated_at)"
    " VALUES (:guild_id, :user_id, :defaults, :now)"
    " ON CONFLICT (guild_id, user_id) DO UPDATE SET defaults = excluded.defaults, updated_at = excluded.updated_at"
)
FORGET_MEMBER_DEFAULTS = "DELETE FROM member_defaults WHERE guild_id = :guild_id AND user_id = :user_id"
STYLES = "SELECT * FROM styles WHERE guild_id = :guild_id ORDER BY name"
PUT_STYLE = (
    "INSERT INTO styles (guild_id, name, template, created_by, created_at)"
    " VALUES (:guild_id, :name, :template, :actor_id, :now)"
    " ON CONFLICT (guild_id, name) DO UPDATE SET template = excluded.template,"
    " created_by = excluded.created_by, created_at = excluded.created_at"
)
REMOVE_STYLE = "DELETE FROM styles WHERE guild_id = :guild_id AND name = :name RETURNING template"
ALLOWED_CHANNELS = "SELECT channel_id FROM channel_rules WHERE guild_id = :guild_id ORDER BY channel_id"
ALLOW_CHANNEL = (
    "INSERT INTO channel_rules (guild_id, channel_id) VALUES (:guild_id, :channel_id)"
    " ON CONFLICT DO NOTHING RETURNING 1"
)
DISALLOW_CHANNEL = "DELETE FROM channel_rules WHERE guild_id = :guild_id AND channel_id = :channel_id RETURNING 1"

# --- job ownership (leases), cancel flags, process heartbeats ------------------------------------------

# Claimed jobs are those with an owner that are not terminal; they count against the run limits.
# Round-robin: `turn` is a job's place in its member's queue, and the claim takes every member's first
# job before anyone's second (then by age). Each limit is checked on the running count plus the job's
# place among the candidates of the same member, server, and overall, in this one statement.
CLAIM_JOBS = f"""
WITH running AS (
    SELECT guild_id, user_id FROM jobs WHERE owner IS NOT NULL AND status IN {ACTIVE_SQL}
), member_running AS (
    -- counted once, grouped, not once per queued row: a claim's cost stays linear in the jobs
    SELECT guild_id, user_id, count(*) AS n FROM running GROUP BY guild_id, user_id
), guild_running AS (
    SELECT guild_id, count(*) AS n FROM running GROUP BY guild_id
), total_running AS (
    SELECT count(*) AS n FROM running
), queued AS (
    -- asked: the order members asked in (the interaction's snowflake); jobs without one, by creation
    SELECT id, guild_id, user_id, COALESCE(request_id, 0) AS asked, created_at, rowid AS seq,
           ROW_NUMBER() OVER (
               PARTITION BY guild_id, user_id ORDER BY COALESCE(request_id, 0), created_at, rowid
           ) AS turn
    FROM jobs WHERE status = 'queued' AND owner IS NULL AND reply_message_id IS NOT NULL
), served AS (
    -- When each waiting member last had a job started (claimed), by any process: within a round, the
    -- member served longest ago goes first, so a finished job's member goes to the back of the line.
    SELECT w.guild_id, w.user_id,
           COALESCE((SELECT max(j.started_at) FROM jobs AS j
                     WHERE j.guild_id = w.guild_id AND j.user_id = w.user_id), -1) AS last_start
    FROM (SELECT DISTINCT guild_id, user_id FROM queued) AS w
), member_ok AS (
    SELECT q.*, s.last_start FROM queued AS q
    JOIN served AS s ON s.guild_id = q.guild_id AND s.user_id = q.user_id
    LEFT JOIN member_running AS mr ON mr.guild_id = q.guild_id AND mr.user_id = q.user_id
    WHERE q.turn + COALESCE(mr.n, 0) <= :per_member
), guild_ranked AS (
    SELECT m.*,
           ROW_NUMBER() OVER (PARTITION BY guild_id ORDER BY turn, last_start, asked, created_at, seq) AS guild_turn
    FROM member_ok AS m
), guild_ok AS (
    SELECT g.* FROM guild_ranked AS g
    LEFT JOIN guild_running AS gr ON gr.guild_id = g.guild_id
    WHERE g.guild_turn + COALESCE(gr.n, 0) <= :per_guild
), ranked AS (
    SELECT id, ROW_NUMBER() OVER (ORDER BY turn, last_start, asked, created_at, seq) AS place FROM guild_ok
)
-- Claimed is SUBMITTING at once (no write of its own per job), with submitted_at still NULL: "claimed, not
-- submitted yet", which MARK_SUBMITTED ends just before the POST. Given back or taken over before that,
-- the job goes back in line; after it, its POST may have gone out.
UPDATE jobs SET owner = :owner, lease_expires_at = :lease_until, started_at = :now, status = 'submitting'
WHERE status = 'queued' AND owner IS NULL AND id IN (
    SELECT r.id FROM ranked AS r, total_running AS t
    WHERE r.place <= :most AND r.place + t.n <= :global_limit
)
RETURNING *
"""
RENEW_LEASES = f"""
UPDATE jobs SET lease_expires_at = :lease_until
WHERE owner = :owner AND status IN {ACTIVE_SQL}
RETURNING id
"""
# A job is taken over only when its lease ran out and its owner has no fresh heartbeat: both signs agree
# the owner is gone. The WHERE is re-checked on the locked row, so two takers never both win a job.
TAKE_OVER_JOBS = f"""
UPDATE jobs SET owner = :owner, lease_expires_at = :lease_until
WHERE status IN {ACTIVE_SQL} AND (
    -- started, then given back (a clean shutdown) or left by a run before leases: nobody works on it
    (owner IS NULL AND status <> 'queued')
    OR (owner <> :owner AND lease_expires_at < :now
        AND owner NOT IN (SELECT process_id FROM processes WHERE last_seen >= :alive_since))
)
RETURNING *
"""
# A job claimed but not submitted yet goes back in line (queued, claimable by anyone); any other stays as
# it is, unowned, for a taker to resume.
RELEASE_JOB = f"""
UPDATE jobs SET owner = NULL, lease_expires_at = NULL,
    status = CASE WHEN status = 'submitting' AND submitted_at IS NULL THEN 'queued' ELSE status END
WHERE id = :id AND owner = :owner AND status IN {ACTIVE_SQL}
RETURNING id
"""
# The last step before a job's POST: only its owner, only once, never after a cancel was asked for.
MARK_SUBMITTED = """
UPDATE jobs SET submitted_at = :now
WHERE id = :id AND owner = :owner AND status = 'submitting' AND submitted_at IS NULL AND cancel_requested = 0
RETURNING id
"""
REQUEST_CANCEL = f"UPDATE jobs SET cancel_requested = 1 WHERE id = :id AND status IN {ACTIVE_SQL} RETURNING id"
CANCEL_REQUESTED = "SELECT cancel_requested FROM jobs WHERE id = :id"
CANCELS_REQUESTED = f"SELECT id FROM jobs WHERE owner = :owner AND cancel_requested = 1 AND status IN {ACTIVE_SQL}"
HEARTBEAT = """
INSERT INTO processes (process_id, shards, version, started_at, last_seen)
VALUES (:process_id, :shards, :version, :now, :now)
ON CONFLICT (process_id) DO UPDATE SET shards = excluded.shards, version = excluded.version,
    last_seen = excluded.last_seen
"""
ALIVE_PROCESSES = "SELECT * FROM processes WHERE last_seen >= :since ORDER BY started_at, process_id"
FORGET_PROCESS = "DELETE FROM processes WHERE process_id = :process_id"

SCHEMA_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)
SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_version"
RECORD_VERSION = "INSERT INTO schema_version (version, name, applied_at) VALUES (:version, :name, :now)"


class Queries:
    """The statements that need a dialect fragment, built once per dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        in_first_bucket = (
            "AND created_at >= {start} AND created_at < {bucket} + 1 AND " + dialect.bucket_of.format(x="created_at")
        ) + " < {bucket}"
        member_first = in_first_bucket.format(start=":period_start", bucket=":period_bucket")
        self._in_first_bucket = in_first_bucket
        # Sums since a period start P: whole 15-minute buckets from B = P rounded up to a bucket (running
        # totals, migration 0002), plus the ledger lines from P to B one by one (none when P starts a
        # bucket, as local midnights do). The bucket expression is the one the trigger uses.
        member_net = f"""
(SELECT CAST(coalesce(sum(adjusted - captured), 0) AS BIGINT) FROM member_buckets
 WHERE guild_id = :guild_id AND user_id = :user_id AND bucket >= :period_bucket)
+ (SELECT CAST(coalesce(sum(CASE kind WHEN 'grant' THEN amount ELSE -amount END), 0) AS BIGINT) FROM ledger
   WHERE guild_id = :guild_id AND user_id = :user_id AND kind IN ('grant', 'deduct', 'capture') {member_first})
"""
        member_available = f"CAST(:allowance AS BIGINT) + {member_net} - {MEMBER_HELD}"
        self.server_spend = self.spend_since("budget")
        self.bot_spend = self.spend_since("bot_day", whole_bot=True)
        guild_cap_spend = self.spend_since("cap")
        bot_month_spend = self.spend_since("bot_month", whole_bot=True)
        # Every guard a hold can have, by name; `hold()` puts the ones a request needs in its WHERE.
        self.guards = {
            "approved": APPROVED,
            "bot_day": f"({self.bot_spend}) + :amount <= CAST(:bot_daily_cap AS BIGINT)",
            "bot_month": f"({bot_month_spend}) + :amount <= CAST(:bot_monthly_cap AS BIGINT)",
            "guild_cap": f"({guild_cap_spend}) + :amount <= CAST(:guild_cap AS BIGINT)",
            "queue": QUEUE_GUARD,
            "member": f"({member_available}) >= :amount",
            "budget": f"({self.server_spend}) + :amount <= CAST(:budget AS BIGINT)",
        }
        # What a refused member is told, read in the refused transaction itself (no row when it went in).
        self.limit_figures = f"""
SELECT {member_available} AS available, {self.server_spend} AS spent, {MEMBER_JOBS} AS member_jobs,
       {GUILD_JOBS} AS guild_jobs, {guild_cap_spend} AS cap_spent, {self.bot_spend} AS bot_day_spent,
       {bot_month_spend} AS bot_month_spent, {APPROVED} AS approved
WHERE NOT EXISTS (SELECT 1 FROM holds WHERE job_id = :id)
"""
        self.member_totals = f"""
SELECT
    (SELECT CAST(coalesce(sum(adjusted), 0) AS BIGINT) FROM member_buckets
     WHERE guild_id = :guild_id AND user_id = :user_id AND bucket >= :period_bucket)
    + (SELECT CAST(coalesce(sum(CASE kind WHEN 'grant' THEN amount ELSE -amount END), 0) AS BIGINT) FROM ledger
       WHERE guild_id = :guild_id AND user_id = :user_id AND kind IN ('grant', 'deduct') {member_first})
    AS granted,
    (SELECT CAST(coalesce(sum(captured), 0) AS BIGINT) FROM member_buckets
     WHERE guild_id = :guild_id AND user_id = :user_id AND bucket >= :period_bucket)
    + (SELECT CAST(coalesce(sum(amount), 0) AS BIGINT) FROM ledger
       WHERE guild_id = :guild_id AND user_id = :user_id AND kind = 'capture' {member_first})
    AS captured,
    {MEMBER_HELD} AS held
"""
        rules = (
            "(SELECT " + dialect.json_object_agg.format(key="model", value="allowed")
            + " FROM model_rules WHERE guild_id = :guild_id) AS rules"
        )
        policy_from = """
FROM (SELECT CAST(:guild_id AS BIGINT) AS wanted) AS q
LEFT JOIN guild_policy AS p ON p.guild_id = q.wanted
"""
        self.get_policy = f"SELECT p.*, p.guild_id IS NOT NULL AS present, {rules} {policy_from}"
        override = dialect.json_array.format(items="amount, period")
        roles = dialect.json_array_agg.format(item=dialect.json_array.format(items="role_id, amount, period"))
        # The policy, the member's override and the role allowances in one read (what every hold needs).
        self.allowance_context = f"""
SELECT p.*, p.guild_id IS NOT NULL AS present, {rules},
       (SELECT {override} FROM member_allowances
        WHERE guild_id = :guild_id AND user_id = :user_id) AS override,
       (SELECT {roles} FROM role_allowances WHERE guild_id = :guild_id) AS roles
{policy_from}
"""

    def spend_since(self, start: str, *, whole_bot: bool = False) -> str:
        """Captured since `:{start}_start` (buckets from `:{start}_bucket`) plus active holds, of the server
        or, with `whole_bot`, of every server: the one definition behind budgets and the operator's caps."""
        guild = "" if whole_bot else "guild_id = :guild_id AND "
        first = self._in_first_bucket.format(start=f":{start}_start", bucket=f":{start}_bucket")
        return f"""
(SELECT CAST(coalesce(sum(captured), 0) AS BIGINT) FROM guild_buckets WHERE {guild}bucket >= :{start}_bucket)
+ (SELECT CAST(coalesce(sum(amount), 0) AS BIGINT) FROM ledger WHERE {guild}kind = 'capture' {first})
+ (SELECT CAST(coalesce(sum(amount), 0) AS BIGINT) FROM holds WHERE {guild}state = 'held')
"""

    def hold(self, guards: Sequence[str]) -> str:
        """The guarded hold insert: it writes a row only when every named guard (see `guards`) has room."""
        clauses = [self.guards[name] for name in guards]
        return INSERT_HOLD + ("WHERE " + " AND ".join(clauses) if clauses else "")


def bucket_after(start: float) -> int:
    """The first bucket boundary at or after `start` (migration 0002)."""
    return math.ceil(start / BUCKET_SECONDS) * BUCKET_SECONDS
