-- 0003 (portable, both databases): a version per server's blocklist, bumped in the transaction that adds or removes a term, so that a
-- process holding a compiled copy of the list sees any change (its own or another process's) with one
-- cheap read per prompt.

CREATE TABLE blocklist_versions (
    guild_id BIGINT PRIMARY KEY,
    version  BIGINT NOT NULL
);
