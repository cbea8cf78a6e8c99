-- One row per completed run, as received on learning.run-completed.
-- Idempotent on run_id: a redelivered bundle adds no row. Artifact content is
-- not kept here (only ids, kinds, hashes and origins): curated, redacted text
-- lives in dataset_samples.
CREATE TABLE runs (
    run_id           text        PRIMARY KEY,
    event_id         uuid        NOT NULL UNIQUE,
    doer             text        NOT NULL,
    phase            text        NOT NULL,
    policy_id        text        NOT NULL,
    policy_version   integer     NOT NULL,
    tenant_id        text        NOT NULL,
    deployment_id    text,
    arm              text        CHECK (arm IN ('control', 'candidate')),
    occurred_at      timestamptz NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    bundle           jsonb       NOT NULL
);

CREATE INDEX runs_doer_occurred_at ON runs (doer, occurred_at);
CREATE INDEX runs_policy ON runs (policy_id, policy_version);
