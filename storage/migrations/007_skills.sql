-- Skill cards and the experiment requests the learning triggers raise.
-- See docs/skill-cards.md.

-- Every skill card a doer has had: the current one (is_current) and its history.
-- A new row is written only when the card's content changed (content_hash, of
-- the card without its timestamps), so history is a list of real changes.
CREATE TABLE skill_cards (
    id             bigserial        PRIMARY KEY,
    doer           text             NOT NULL,
    event_id       uuid             NOT NULL UNIQUE,  -- the SkillCard event published
    as_of          date             NOT NULL,         -- the UTC day the card summarises
    content_hash   text             NOT NULL CHECK (content_hash ~ '^[0-9a-f]{64}$'),
    runs           integer          NOT NULL CHECK (runs >= 0),
    gate_pass_rate double precision CHECK (gate_pass_rate BETWEEN 0 AND 1),
    mean_crl       double precision CHECK (mean_crl >= 0),
    delta_7d       double precision,
    delta_30d      double precision,
    policy_id      text,
    policy_version integer,
    card           jsonb            NOT NULL,         -- the whole SkillCard event
    is_current     boolean          NOT NULL DEFAULT true,
    computed_at    timestamptz      NOT NULL,
    superseded_at  timestamptz,
    CHECK (is_current = (superseded_at IS NULL)),
    CHECK ((policy_id IS NULL) = (policy_version IS NULL))
);

-- One current card per doer, whatever the code does.
CREATE UNIQUE INDEX skill_cards_one_current_per_doer ON skill_cards (doer) WHERE is_current;
CREATE INDEX skill_cards_history ON skill_cards (doer, id);

-- Experiment requests raised by a learning trigger (a CRL regression alert, a
-- gate failing too often). At most one open request per doer and reason, so a
-- storm of failures gives one request. published_at is set once the
-- RequestExperiment event was acknowledged by Kafka: a request recorded but not
-- yet published is published again by the next trigger.
CREATE TABLE experiment_requests (
    request_id        uuid        PRIMARY KEY,        -- event_id of the RequestExperiment
    doer              text        NOT NULL,
    reason            text        NOT NULL,           -- e.g. crl_regression, gate_failure:lint
    status            text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    hypothesis        text        NOT NULL,
    message           text        NOT NULL,           -- the figure and the threshold, in words
    evidence          jsonb       NOT NULL DEFAULT '{}',
    source_event_id   uuid,                           -- the alert that raised it, if one did
    opened_at         timestamptz NOT NULL DEFAULT now(),
    last_triggered_at timestamptz NOT NULL DEFAULT now(),
    published_at      timestamptz,
    experiment_id     text,                           -- the experiment that answered it
    closed_at         timestamptz,
    closed_reason     text,
    CHECK ((status = 'closed') = (closed_at IS NOT NULL))
);

CREATE UNIQUE INDEX experiment_requests_one_open ON experiment_requests (doer, reason)
    WHERE status = 'open';
CREATE INDEX experiment_requests_doer ON experiment_requests (doer, opened_at);
