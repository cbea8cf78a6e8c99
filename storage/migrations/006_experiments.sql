-- Experiments, offline replays and the content-addressed blobs they stand on.
-- See docs/experiments.md.

-- Content-addressed storage: a blob's key is the SHA-256 of its bytes, checked
-- here, so a replay's inputs (policy artifacts, samples) and outputs (per-task
-- results, summaries) can be fetched by hash and verified by anyone.
CREATE TABLE blobs (
    sha256     text        PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    content    bytea       NOT NULL,
    media_type text        NOT NULL DEFAULT 'application/json',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT blobs_key_is_the_content_hash CHECK (sha256 = encode(sha256(content), 'hex'))
);

-- One row per replay: a policy over a frozen golden dataset under a seed set.
-- replay_id is a UUIDv5 of (policy hash, manifest hash, seed set), so the same
-- request finds the same row and is answered from it unless forced (a forced
-- request starts a new attempt). The control is the replay of the doer's
-- active policy on the same dataset and seeds; the verdict compares the two.
CREATE TABLE offline_replays (
    replay_id         text             PRIMARY KEY,
    doer              text             NOT NULL,
    phase             text             NOT NULL,
    policy_id         text             NOT NULL,
    policy_version    integer          NOT NULL,
    policy_hash       text             NOT NULL CHECK (policy_hash ~ '^[0-9a-f]{64}$'),
    dataset_name      text             NOT NULL,
    dataset_version   integer          NOT NULL,
    manifest_hash     text             NOT NULL CHECK (manifest_hash ~ '^[0-9a-f]{64}$'),
    seeds             integer[]        NOT NULL CHECK (cardinality(seeds) > 0),
    status            text             NOT NULL CHECK (status IN ('running', 'complete', 'incomplete')),
    attempt           integer          NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    requested_by      uuid             NOT NULL,  -- event id of the request that started the attempt
    actor             text             NOT NULL,
    task_count        integer          NOT NULL CHECK (task_count > 0),
    timeout_s         double precision NOT NULL CHECK (timeout_s > 0),
    started_at        timestamptz      NOT NULL,
    deadline          timestamptz      NOT NULL,
    completed_at      timestamptz,
    control_replay_id text             REFERENCES offline_replays (replay_id),
    -- The result, once complete: per seed {mean_crl, runs}, the summary, its blob.
    per_seed          jsonb,
    mean_crl          double precision,
    std_crl           double precision,
    stability         double precision CHECK (stability BETWEEN 0 AND 1),
    runs              integer,
    result_hash       text             REFERENCES blobs (sha256),
    missing_tasks     jsonb,           -- when incomplete: [{task_id, sample_id, seed}, ...]
    verdict           jsonb,           -- {passed, reason, numbers}, once the control is in too
    FOREIGN KEY (policy_id, policy_version) REFERENCES policies (policy_id, version),
    FOREIGN KEY (dataset_name, dataset_version) REFERENCES golden_datasets (name, version),
    CHECK ((status = 'complete') = (mean_crl IS NOT NULL)),
    CHECK ((status = 'incomplete') = (missing_tasks IS NOT NULL))
);

CREATE INDEX offline_replays_policy ON offline_replays (policy_id, policy_version);
CREATE INDEX offline_replays_control ON offline_replays (control_replay_id);
CREATE INDEX offline_replays_running ON offline_replays (deadline) WHERE status = 'running';

-- One row per (sample, seed) of a replay. task_id is a UUIDv5 of (policy hash,
-- manifest hash, sample, seed); run_id names the attempt, so a result of an
-- earlier attempt is never taken for the current one.
CREATE TABLE offline_replay_tasks (
    task_id      text             PRIMARY KEY,
    replay_id    text             NOT NULL REFERENCES offline_replays (replay_id),
    sample_id    text             NOT NULL,
    seed         integer          NOT NULL,
    input_hash   text             NOT NULL REFERENCES blobs (sha256),
    run_id       text             NOT NULL,
    loss         double precision CHECK (loss >= 0),
    output_hash  text             REFERENCES blobs (sha256),
    completed_at timestamptz,
    UNIQUE (replay_id, sample_id, seed),
    CHECK ((loss IS NULL) = (completed_at IS NULL))
);

CREATE INDEX offline_replay_tasks_run ON offline_replay_tasks (run_id);

-- An experiment: a candidate policy for a doer and phase, replayed against the
-- doer's active policy (the control, fixed when it starts) on a golden dataset,
-- then deployed in shadow/canary if the replay passes.
CREATE TABLE experiments (
    experiment_id     text        PRIMARY KEY,
    created_by        uuid        NOT NULL UNIQUE,  -- event id of the create command
    experiment_type   text        NOT NULL CHECK (
        experiment_type IN ('prompt_synthesis', 'adapter_training', 'tool_tuning', 'rag_optimization')
    ),
    doer              text        NOT NULL,
    phase             text        NOT NULL,
    hypothesis        text        NOT NULL,
    actor             text        NOT NULL,
    reason            text        NOT NULL,
    dataset_name      text,
    dataset_version   integer,
    seeds             integer[]   NOT NULL CHECK (cardinality(seeds) > 0),
    policy_id         text        NOT NULL,
    policy_version    integer     NOT NULL,
    control_policy_id text,
    control_version   integer,
    deploy            text        NOT NULL DEFAULT 'shadow' CHECK (deploy IN ('shadow', 'canary')),
    plan              jsonb       NOT NULL DEFAULT '{}',
    status            text        NOT NULL CHECK (status IN (
        'created', 'replaying', 'shadow', 'canary', 'promoted', 'rolled_back', 'failed', 'incomplete'
    )),
    replay_id         text        REFERENCES offline_replays (replay_id),
    control_replay_id text        REFERENCES offline_replays (replay_id),
    deploy_command_id uuid,       -- the start_shadow / start_canary command it sent
    deployment_id     text,
    outcome           jsonb       NOT NULL DEFAULT '{}',  -- the numbers that decided it
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    concluded_at      timestamptz,
    FOREIGN KEY (dataset_name, dataset_version) REFERENCES golden_datasets (name, version),
    CHECK ((control_policy_id IS NULL) = (control_version IS NULL))
);

CREATE INDEX experiments_doer ON experiments (doer, created_at);
CREATE INDEX experiments_replay ON experiments (replay_id);
CREATE INDEX experiments_open ON experiments (doer)
    WHERE status IN ('created', 'replaying', 'shadow', 'canary');

-- Every transition of every experiment, with its reason and time. Append-only.
CREATE TABLE experiment_history (
    id            bigserial   PRIMARY KEY,
    experiment_id text        NOT NULL REFERENCES experiments (experiment_id),
    seq           integer     NOT NULL CHECK (seq >= 0),
    from_status   text,
    to_status     text        NOT NULL,
    reason        text        NOT NULL,
    evidence      jsonb       NOT NULL DEFAULT '{}',
    occurred_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (experiment_id, seq)
);

CREATE TRIGGER trigger_experiment_history_append_only
    BEFORE UPDATE OR DELETE ON experiment_history
    FOR EACH ROW EXECUTE FUNCTION refuse_audit_change();

-- Per experiment type, doer and week: how many started, how many concluded,
-- how many ended promoted, and the success rate among those concluded.
CREATE VIEW v_experiment_success_rate AS
SELECT experiment_type,
       doer,
       date_trunc('week', created_at)::date AS week,
       count(*) AS experiments,
       count(*) FILTER (WHERE status IN ('promoted', 'rolled_back', 'failed', 'incomplete'))
           AS concluded,
       count(*) FILTER (WHERE status = 'promoted') AS promoted,
       count(*) FILTER (WHERE status = 'promoted')::double precision
           / nullif(count(*) FILTER (
               WHERE status IN ('promoted', 'rolled_back', 'failed', 'incomplete')), 0)
           AS success_rate
FROM experiments
GROUP BY experiment_type, doer, date_trunc('week', created_at);

-- Per policy version: live runs (replays and shadow runs excluded), mean CRL
-- with a normal-approximation 95 % interval (mean ± 1.96·s/√n), and how often
-- it was promoted and rolled back.
CREATE VIEW v_policy_performance AS
WITH runs AS (
    SELECT doer, policy_id, policy_version AS version,
           count(*) AS runs, avg(loss) AS mean_crl, stddev_samp(loss) AS std_crl
    FROM crl_results
    WHERE replay_id IS NULL AND NOT shadow
    GROUP BY doer, policy_id, policy_version
), moves AS (
    SELECT policy_id, version,
           count(*) FILTER (WHERE action = 'promote') AS promotions,
           count(*) FILTER (WHERE action = 'rollback') AS rollbacks
    FROM policy_promotions
    WHERE outcome = 'applied' AND policy_id IS NOT NULL
    GROUP BY policy_id, version
)
SELECT coalesce(p.doer, r.doer) AS doer,
       coalesce(p.policy_id, r.policy_id) AS policy_id,
       coalesce(p.version, r.version) AS version,
       p.status,
       coalesce(r.runs, 0) AS runs,
       r.mean_crl,
       r.std_crl,
       r.mean_crl - 1.96 * r.std_crl / sqrt(r.runs) AS ci_low,
       r.mean_crl + 1.96 * r.std_crl / sqrt(r.runs) AS ci_high,
       coalesce(m.promotions, 0) AS promotions,
       coalesce(m.rollbacks, 0) AS rollbacks
FROM policies AS p
FULL JOIN runs AS r ON r.policy_id = p.policy_id AND r.version = p.version
LEFT JOIN moves AS m
    ON m.policy_id = coalesce(p.policy_id, r.policy_id)
   AND m.version = coalesce(p.version, r.version);
