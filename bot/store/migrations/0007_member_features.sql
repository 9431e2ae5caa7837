-- 0007 (portable, both databases): what members and art channels asked for (issue 13): saved defaults, server styles, channel rules,
-- spoilers, and on each job the style it used and the job it was remixed from.

-- A member's saved /imagine defaults on one server (JSON: model, aspect_ratio, count, other options).
CREATE TABLE member_defaults (
    guild_id   BIGINT NOT NULL,
    user_id    BIGINT NOT NULL,
    defaults   TEXT    NOT NULL DEFAULT '{}',
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

-- Named prompt templates of a server; `template` holds {prompt} where the member's text goes.
CREATE TABLE styles (
    guild_id   BIGINT NOT NULL,
    name       TEXT    NOT NULL,
    template   TEXT    NOT NULL,
    created_by BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (guild_id, name)
);

-- The channels where /imagine, re-roll and remix work; a server with no row allows every channel.
CREATE TABLE channel_rules (
    guild_id   BIGINT NOT NULL,
    channel_id BIGINT NOT NULL,
    PRIMARY KEY (guild_id, channel_id)
);

-- off: only when a member asks; all: every result; outside_nsfw: every result outside age-restricted channels.
ALTER TABLE guild_policy ADD COLUMN spoiler_mode TEXT NOT NULL DEFAULT 'off'
    CHECK (spoiler_mode IN ('off', 'all', 'outside_nsfw'));

ALTER TABLE jobs ADD COLUMN style TEXT;          -- the server style's name, when one was used
ALTER TABLE jobs ADD COLUMN remix_of TEXT;       -- the job this one was remixed from
ALTER TABLE jobs ADD COLUMN spoiler INTEGER NOT NULL DEFAULT 0;
