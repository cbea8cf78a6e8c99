-- Every alert on learning.alerts, as the alerts stage records it, for the
-- console's live page (issue 18). See docs/console.md.
CREATE TABLE alerts (
    id             bigserial        PRIMARY KEY,
    event_id       uuid             NOT NULL UNIQUE,  -- the alert's; a redelivery adds nothing
    doer           text             NOT NULL,
    kind           text             NOT NULL,
    severity       text             NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    message        text             NOT NULL,
    value          double precision,
    baseline       double precision,
    threshold      double precision,
    phase          text,
    policy_id      text,
    policy_version integer,
    deployment_id  text,
    evidence       jsonb            NOT NULL DEFAULT '{}'::jsonb,
    occurred_at    timestamptz      NOT NULL,
    recorded_at    timestamptz      NOT NULL DEFAULT now()
);

CREATE INDEX alerts_doer ON alerts (doer, occurred_at);
