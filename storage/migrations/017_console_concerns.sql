-- The console's remaining concerns (issue 18): CRL trends per phase and per
-- policy, learning progress, policy performance and skill-card rankings.
-- See docs/console.md.

-- Daily CRL per doer, phase and policy version, from live runs only (replays and
-- shadow runs never count, as in learning_progress). Sufficient statistics, so
-- days and keys merge exactly: variance = m2 / (runs - 1). The trend views read
-- this instead of crl_results, whose rows grow with every run.
CREATE TABLE crl_daily (
    doer           text             NOT NULL,
    phase          text             NOT NULL,
    policy_id      text             NOT NULL,
    policy_version integer          NOT NULL,
    day            date             NOT NULL,
    runs           integer          NOT NULL CHECK (runs > 0),
    mean_crl       double precision NOT NULL,
    m2             double precision NOT NULL CHECK (m2 >= -1e-9),
    updated_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (doer, phase, policy_id, policy_version, day)
);

CREATE INDEX crl_daily_day ON crl_daily (day);

-- The same fold as crl_progress() (migration 001): a statement-level trigger sees
-- only the rows actually inserted, so a redelivered result changes nothing.
CREATE FUNCTION crl_daily_fold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO crl_daily AS cd (doer, phase, policy_id, policy_version, day, runs, mean_crl, m2)
    SELECT doer, phase, policy_id, policy_version,
           (occurred_at AT TIME ZONE 'UTC')::date,
           count(*),
           avg(loss),
           coalesce(var_pop(loss) * count(*), 0)
    FROM inserted
    WHERE replay_id IS NULL AND NOT shadow
    GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (doer, phase, policy_id, policy_version, day) DO UPDATE SET
        runs     = cd.runs + EXCLUDED.runs,
        mean_crl = cd.mean_crl
                   + (EXCLUDED.mean_crl - cd.mean_crl) * EXCLUDED.runs / (cd.runs + EXCLUDED.runs),
        m2       = cd.m2 + EXCLUDED.m2
                   + (EXCLUDED.mean_crl - cd.mean_crl) ^ 2 * cd.runs * EXCLUDED.runs
                     / (cd.runs + EXCLUDED.runs),
        updated_at = now();
    RETURN NULL;
END
$$;

-- Created before the backfill, in the same transaction: the trigger's lock holds
-- back concurrent inserts until both are committed, so no run is counted twice or lost.
CREATE TRIGGER trigger_crl_daily_fold
    AFTER INSERT ON crl_results
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION crl_daily_fold();

INSERT INTO crl_daily (doer, phase, policy_id, policy_version, day, runs, mean_crl, m2)
SELECT doer, phase, policy_id, policy_version, (occurred_at AT TIME ZONE 'UTC')::date,
       count(*), avg(loss), coalesce(var_pop(loss) * count(*), 0)
FROM crl_results
WHERE replay_id IS NULL AND NOT shadow
GROUP BY 1, 2, 3, 4, 5;

-- CRL per phase and day over all doers, run-weighted, with the trailing 7-day
-- baseline (the 7 days before the day), as v_crl_trend_overall does overall.
CREATE VIEW v_crl_trend_by_phase AS
WITH days AS (
    SELECT phase, day, sum(runs) AS runs, sum(mean_crl * runs) / sum(runs) AS mean_crl
    FROM crl_daily
    GROUP BY phase, day
), windowed AS (
    SELECT phase, day, runs, mean_crl,
           sum(mean_crl * runs) OVER wb AS sum_base, sum(runs) OVER wb AS runs_base
    FROM days
    WINDOW wb AS (PARTITION BY phase ORDER BY day
                  RANGE BETWEEN INTERVAL '7 days' PRECEDING AND INTERVAL '1 day' PRECEDING)
)
SELECT phase, day, runs, mean_crl,
       sum_base / nullif(runs_base, 0) AS baseline_crl,
       mean_crl - sum_base / nullif(runs_base, 0) AS delta_vs_baseline
FROM windowed;

-- CRL per doer, phase and day, with the doer's phase baseline (the doer page).
CREATE VIEW v_crl_trend_by_doer_phase AS
WITH days AS (
    SELECT doer, phase, day, sum(runs) AS runs, sum(mean_crl * runs) / sum(runs) AS mean_crl
    FROM crl_daily
    GROUP BY doer, phase, day
), windowed AS (
    SELECT doer, phase, day, runs, mean_crl,
           sum(mean_crl * runs) OVER wb AS sum_base, sum(runs) OVER wb AS runs_base
    FROM days
    WINDOW wb AS (PARTITION BY doer, phase ORDER BY day
                  RANGE BETWEEN INTERVAL '7 days' PRECEDING AND INTERVAL '1 day' PRECEDING)
)
SELECT doer, phase, day, runs, mean_crl,
       sum_base / nullif(runs_base, 0) AS baseline_crl,
       mean_crl - sum_base / nullif(runs_base, 0) AS delta_vs_baseline
FROM windowed;

-- CRL per policy version and day (all phases), with the version's own baseline.
CREATE VIEW v_crl_trend_by_policy AS
WITH days AS (
    SELECT doer, policy_id, policy_version, day,
           sum(runs) AS runs, sum(mean_crl * runs) / sum(runs) AS mean_crl
    FROM crl_daily
    GROUP BY doer, policy_id, policy_version, day
), windowed AS (
    SELECT doer, policy_id, policy_version, day, runs, mean_crl,
           sum(mean_crl * runs) OVER wb AS sum_base, sum(runs) OVER wb AS runs_base
    FROM days
    WINDOW wb AS (PARTITION BY doer, policy_id, policy_version ORDER BY day
                  RANGE BETWEEN INTERVAL '7 days' PRECEDING AND INTERVAL '1 day' PRECEDING)
)
SELECT doer, policy_id, policy_version, day, runs, mean_crl,
       sum_base / nullif(runs_base, 0) AS baseline_crl,
       mean_crl - sum_base / nullif(runs_base, 0) AS delta_vs_baseline
FROM windowed;

-- Per experiment type: started, concluded, promoted, and the success rate
-- (promoted among concluded) over all time: v_experiment_success_rate summed.
CREATE VIEW v_experiment_success_by_type AS
SELECT experiment_type,
       sum(experiments)::bigint AS experiments,
       sum(concluded)::bigint AS concluded,
       sum(promoted)::bigint AS promoted,
       sum(promoted)::double precision / nullif(sum(concluded), 0) AS success_rate
FROM v_experiment_success_rate
GROUP BY experiment_type;

-- Every promoted experiment with the CRL improvement its canary measured: the
-- arms' means in the report of the promote decision of its deployment.
-- improvement = control − candidate (above 0: the candidate's loss is lower).
CREATE VIEW v_promoted_experiments AS
SELECT e.experiment_id, e.experiment_type, e.doer, e.policy_id, e.policy_version,
       e.deployment_id, e.concluded_at,
       (d.report ->> 'control_mean')::double precision AS control_mean,
       (d.report ->> 'candidate_mean')::double precision AS candidate_mean,
       (d.report ->> 'control_mean')::double precision
           - (d.report ->> 'candidate_mean')::double precision AS improvement,
       ((d.report ->> 'control_mean')::double precision
           - (d.report ->> 'candidate_mean')::double precision)
           / nullif((d.report ->> 'control_mean')::double precision, 0) AS improvement_pct
FROM experiments e
JOIN LATERAL (
    SELECT report FROM deployment_decisions dd
    WHERE dd.deployment_id = e.deployment_id AND dd.action = 'promote'
    ORDER BY dd.decided_at DESC, dd.id DESC
    LIMIT 1
) d ON true
WHERE e.status = 'promoted';

-- Per experiment type: how many promoted experiments and their mean improvement.
CREATE VIEW v_experiment_improvement_by_type AS
SELECT experiment_type,
       count(*) AS promoted,
       avg(improvement) AS mean_improvement,
       avg(improvement_pct) AS mean_improvement_pct
FROM v_promoted_experiments
GROUP BY experiment_type;

-- The active version of each doer, since when, and who made it so.
CREATE VIEW v_active_policies AS
SELECT a.doer, a.policy_id, a.version, a.active_from, p.actor AS promoted_by, p.reason
FROM policy_activations a
JOIN policy_promotions p ON p.event_id = a.promoted_by
WHERE a.active_to IS NULL;

-- Per ISO week (Monday): applied promotions and rollbacks, shadows and canaries
-- started, and the rollback rate among promotions and rollbacks.
CREATE VIEW v_policy_moves_per_week AS
SELECT date_trunc('week', occurred_at AT TIME ZONE 'UTC')::date AS week,
       count(*) FILTER (WHERE action = 'promote') AS promotions,
       count(*) FILTER (WHERE action = 'rollback') AS rollbacks,
       count(*) FILTER (WHERE action = 'start_shadow') AS shadows_started,
       count(*) FILTER (WHERE action = 'start_canary') AS canaries_started,
       count(*) FILTER (WHERE action = 'rollback')::double precision
           / nullif(count(*) FILTER (WHERE action IN ('promote', 'rollback')), 0)
           AS rollback_rate
FROM policy_promotions
WHERE outcome = 'applied' AND action IN ('promote', 'rollback', 'start_shadow', 'start_canary')
GROUP BY 1;

-- Each doer's current skill card ranked by its mean CRL (lower is better):
-- rank_best 1 is the best performer, rank_worst 1 the doer struggling most.
CREATE VIEW v_skill_card_ranking AS
SELECT doer, as_of, runs, mean_crl, delta_7d, delta_30d, gate_pass_rate,
       policy_id, policy_version,
       (card ->> 'crl_mean_7d')::double precision AS crl_mean_7d,
       row_number() OVER (ORDER BY mean_crl ASC, doer) AS rank_best,
       row_number() OVER (ORDER BY mean_crl DESC, doer) AS rank_worst
FROM skill_cards
WHERE is_current AND mean_crl IS NOT NULL;

-- Failure modes across doers: each gate's failures over the current cards'
-- 30 days, and in how many doers it failed.
CREATE VIEW v_failure_modes AS
SELECT f.key AS gate,
       count(*) AS doers,
       sum(f.value::bigint) AS failures
FROM skill_cards c
CROSS JOIN LATERAL jsonb_each_text(coalesce(c.card -> 'gate_failures_30d', '{}'::jsonb)) f
WHERE c.is_current AND f.value::bigint > 0
GROUP BY f.key;

-- Each doer's latest day with its 7-day mean CRL and change against its
-- baseline: the figures v_crl_trend_by_doer has on that day, read from the
-- doer's last 8 days only (through the primary key) instead of windowing every
-- doer's whole history, which the overview cannot afford with 1,000 doers.
CREATE VIEW v_doers_latest AS
SELECT l.doer, l.day, w.mean_crl_7d, w.mean_crl - w.baseline_crl AS delta_vs_baseline
FROM (SELECT doer, max(day) AS day FROM learning_progress GROUP BY doer) l
CROSS JOIN LATERAL (
    SELECT sum(p.mean_crl * p.runs) FILTER (WHERE p.day > l.day - 7)
               / sum(p.runs) FILTER (WHERE p.day > l.day - 7) AS mean_crl_7d,
           sum(p.mean_crl * p.runs) FILTER (WHERE p.day < l.day)
               / nullif(sum(p.runs) FILTER (WHERE p.day < l.day), 0) AS baseline_crl,
           max(p.mean_crl) FILTER (WHERE p.day = l.day) AS mean_crl
    FROM learning_progress p
    WHERE p.doer = l.doer AND p.day BETWEEN l.day - 7 AND l.day
) w;
