-- 0009 (portable: SQLite and PostgreSQL run this same file): the id of the interaction that asked for the
-- job (a Discord snowflake: unique, and increasing with the time the member asked). The queue's order within
-- a member, and between members in a round, is the order members asked, not the order in which concurrent
-- handlers happened to reach the hold.
ALTER TABLE jobs ADD COLUMN request_id BIGINT;
