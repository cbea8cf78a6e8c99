-- The Composite Run Loss of every run: one row per run, idempotent on run_id.
-- The terms and the weights' version are kept so any result can be recomputed
-- under other weights. Artifact text is never stored here.
CREATE TABLE crl_results (
    run_id             text             PRIMARY KEY,
    event_id           uuid             NOT NULL UNIQUE,  -- the CRLComputed event
    source_event_id    uuid             NOT NULL,         -- the RunCompleted bundle
    doer               text             NOT NULL,
    phase              text             NOT NULL,
    policy_id          text             NOT NULL,
    policy_version     integer          NOT NULL,
    tenant_id          text             NOT NULL,
    deployment_id      text,
    arm                text             CHECK (arm IN ('control', 'candidate')),
    shadow             boolean          NOT NULL DEFAULT false,
    replay_id          text,
    model              text,
    occurred_at        timestamptz      NOT NULL,         -- when the run completed
    computed_at        timestamptz      NOT NULL DEFAULT now(),
    loss               double precision NOT NULL CHECK (loss >= 0),
    terms              jsonb            NOT NULL,
    contributions      jsonb            NOT NULL,
    weights_version    text             NOT NULL,
    gate_failures      text[]           NOT NULL DEFAULT '{}',
    security_criticals integer          NOT NULL DEFAULT 0
);

CREATE INDEX crl_results_doer_time ON crl_results (doer, occurred_at);
CREATE INDEX crl_results_policy ON crl_results (policy_id, policy_version);
CREATE INDEX crl_results_deployment ON crl_results (deployment_id, arm) WHERE deployment_id IS NOT NULL;
CREATE INDEX crl_results_replay ON crl_results (replay_id) WHERE replay_id IS NOT NULL;

-- Daily learning progress per doer, from live runs only (replays and shadow
-- runs never count). Sufficient statistics, so days merge exactly:
-- variance = m2 / (runs - 1).
CREATE TABLE learning_progress (
    doer       text             NOT NULL,
    day        date             NOT NULL,
    runs       integer          NOT NULL CHECK (runs > 0),
    mean_crl   double precision NOT NULL,
    m2         double precision NOT NULL CHECK (m2 >= -1e-9),
    updated_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (doer, day)
);

-- Fold each inserted batch into learning_progress with Chan et al.'s pairwise
-- merge of (count, mean, M2), the same formula as learning/moments.py. A
-- statement-level trigger sees only the rows actually inserted, so a
-- redelivered result (ON CONFLICT DO NOTHING) changes nothing.
CREATE FUNCTION crl_progress() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO learning_progress AS lp (doer, day, runs, mean_crl, m2)
    SELECT doer,
           (occurred_at AT TIME ZONE 'UTC')::date,
           count(*),
           avg(loss),
           coalesce(var_pop(loss) * count(*), 0)
    FROM inserted
    WHERE replay_id IS NULL AND NOT shadow
    GROUP BY 1, 2
    ON CONFLICT (doer, day) DO UPDATE SET
        runs     = lp.runs + EXCLUDED.runs,
        mean_crl = lp.mean_crl
                   + (EXCLUDED.mean_crl - lp.mean_crl) * EXCLUDED.runs / (lp.runs + EXCLUDED.runs),
        m2       = lp.m2 + EXCLUDED.m2
                   + (EXCLUDED.mean_crl - lp.mean_crl) ^ 2 * lp.runs * EXCLUDED.runs
                     / (lp.runs + EXCLUDED.runs),
        updated_at = now();
    RETURN NULL;
END
$$;

CREATE TRIGGER trigger_crl_progress
    AFTER INSERT ON crl_results
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION crl_progress();

-- Per doer and day: the day's CRL against its 7- and 30-day windows (count-
-- weighted) and against the 7 days before it (the baseline the alert uses).
CREATE VIEW v_crl_trend_by_doer AS
WITH days AS (
    SELECT doer, day, runs, mean_crl,
           CASE WHEN runs > 1 THEN sqrt(greatest(m2, 0) / (runs - 1)) ELSE 0 END AS std_crl,
           sum(mean_crl * runs) OVER w7 AS sum_7d,  sum(runs) OVER w7 AS runs_7d,
           sum(mean_crl * runs) OVER w30 AS sum_30d, sum(runs) OVER w30 AS runs_30d,
           sum(mean_crl * runs) OVER wb AS sum_base, sum(runs) OVER wb AS runs_base
    FROM learning_progress
    WINDOW w7  AS (PARTITION BY doer ORDER BY day RANGE BETWEEN INTERVAL '6 days' PRECEDING AND CURRENT ROW),
           w30 AS (PARTITION BY doer ORDER BY day RANGE BETWEEN INTERVAL '29 days' PRECEDING AND CURRENT ROW),
           wb  AS (PARTITION BY doer ORDER BY day RANGE BETWEEN INTERVAL '7 days' PRECEDING AND INTERVAL '1 day' PRECEDING)
)
SELECT doer, day, runs, mean_crl, std_crl,
       sum_7d / runs_7d   AS mean_crl_7d,  runs_7d,
       sum_30d / runs_30d AS mean_crl_30d, runs_30d,
       sum_base / nullif(runs_base, 0) AS baseline_crl,
       mean_crl - sum_base / nullif(runs_base, 0) AS delta_vs_baseline
FROM days;
