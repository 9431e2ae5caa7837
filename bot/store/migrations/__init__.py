"""Numbered schema migrations, applied in order at start, all pending ones in one transaction.

`NNNN_name.sql` is portable: SQLite and PostgreSQL both run it. Write it with the common types (BIGINT for
ids and counts, DOUBLE PRECISION for epoch seconds, TEXT, INTEGER for 0/1 flags) and plain DDL
(`ALTER TABLE … ADD COLUMN`, `CREATE TABLE`, `CREATE INDEX … WHERE`). Only when the two must differ
(triggers, serial ids, backfills using SQLite-only functions), add `NNNN_name.postgres.sql` beside it:
PostgreSQL runs that file instead, SQLite the portable one (or name both `.sqlite.sql` and
`.postgres.sql`). A version number is used once; `bot.store.common.load_migrations` checks.
"""
