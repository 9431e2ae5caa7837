-- 0004 (portable, both databases): the language of what the bot posts on its own in a server (results through the channel, failures
-- posted anew): 'auto' follows the server's Discord preferred locale, else a shipped language code.
-- Not CHECKed here: the shipped languages are the files in bot/i18n/locales, validated by bot.policy.
ALTER TABLE guild_policy ADD COLUMN language TEXT NOT NULL DEFAULT 'auto';
