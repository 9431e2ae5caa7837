-- 0005 (portable, both databases): how many of a job's images have been posted to Discord, written after each message is sent, so
-- that a crash between posting and settling is settled for every image the member got (a reply holds at
-- most 10 attachments; the rest are in follow-ups that recovery cannot count from the reply).

ALTER TABLE jobs ADD COLUMN posted_count BIGINT NOT NULL DEFAULT 0;
