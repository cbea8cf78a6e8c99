-- What the dead-letter stage records of every letter on learning.dlq, for the
-- console (issue 18): where it came from, which stage refused it and why.
-- Never the payload or the key (they may hold PII; they stay on the topic, with
-- its retention). See docs/console.md.
CREATE TABLE dead_letters (
    id            bigserial   PRIMARY KEY,
    event_id      uuid        NOT NULL UNIQUE,   -- the letter's; a redelivered letter adds nothing
    doer          text        NOT NULL,          -- 'unknown' when the input named none usable
    stage         text        NOT NULL,
    error_type    text        NOT NULL,
    reason        text        NOT NULL,
    topic         text        NOT NULL,          -- where the refused input was read
    partition     integer     NOT NULL,
    "offset"      bigint      NOT NULL,
    consumer      text,                          -- the consumer group whose stage refused it
    payload_size  bigint,                        -- bytes of the refused value, when known
    occurred_at   timestamptz NOT NULL,          -- when the stage refused it
    recorded_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dead_letters_stage_reason ON dead_letters (stage, error_type, reason);
CREATE INDEX dead_letters_occurred ON dead_letters (occurred_at);

-- Dead letters by stage, error type and reason, with when the first and latest came.
CREATE VIEW v_dead_letters_by_reason AS
SELECT stage, error_type, reason,
       count(*) AS letters,
       count(DISTINCT doer) AS doers,
       min(occurred_at) AS first_at,
       max(occurred_at) AS latest_at
FROM dead_letters
GROUP BY stage, error_type, reason;

-- Dead letters by stage.
CREATE VIEW v_dead_letters_by_stage AS
SELECT stage, count(*) AS letters, count(DISTINCT reason) AS reasons, max(occurred_at) AS latest_at
FROM dead_letters
GROUP BY stage;
