-- The canary stage's durable records: every routed task of a deployment and
-- every decision about one, plus what a deployment is judged by. See docs/canary.md.

-- How the canary decides (models.commands.CanarySettings as JSON), and whether
-- it is paused (a sample ratio mismatch; routing stays as it is).
ALTER TABLE shadow_deployments
    ADD COLUMN canary        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN paused_at     timestamptz,
    ADD COLUMN paused_reason text;

-- One row per routed task (learning.task-routed), written in batches;
-- a redelivered event adds nothing.
CREATE TABLE deployment_routings (
    id            bigserial        PRIMARY KEY,
    event_id      uuid             NOT NULL UNIQUE,
    deployment_id text             NOT NULL,
    doer          text             NOT NULL,
    task_id       text             NOT NULL,
    arm           text             NOT NULL CHECK (arm IN ('control', 'candidate')),
    policy_id     text             NOT NULL,
    policy_version integer         NOT NULL,
    step          integer          NOT NULL CHECK (step >= 0),
    allocation    double precision NOT NULL CHECK (allocation >= 0 AND allocation <= 1),
    routed_at     timestamptz      NOT NULL,
    recorded_at   timestamptz      NOT NULL DEFAULT now()
);

CREATE INDEX deployment_routings_deployment ON deployment_routings (deployment_id, step, arm);
CREATE INDEX deployment_routings_task ON deployment_routings (task_id);

-- Every decision of the canary stage (learning.decisions), with its report.
CREATE TABLE deployment_decisions (
    id                  bigserial   PRIMARY KEY,
    event_id            uuid        NOT NULL UNIQUE,
    deployment_id       text        NOT NULL,
    doer                text        NOT NULL,
    candidate_policy_id text        NOT NULL,
    candidate_version   integer     NOT NULL,
    action              text        NOT NULL CHECK (
        action IN ('step_up', 'promote', 'rollback', 'pause', 'report', 'continue')
    ),
    reason              text        NOT NULL,
    step                integer     NOT NULL CHECK (step >= 0),
    report              jsonb       NOT NULL,
    decided_at          timestamptz NOT NULL,
    recorded_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX deployment_decisions_deployment ON deployment_decisions (deployment_id, decided_at);
