-- Views for the operator console (issue 18): read-only aggregates.

-- CRL over all doers per day, with the trailing 7-day baseline (the 7 days
-- before the day, run-weighted), as v_crl_trend_by_doer does per doer.
CREATE VIEW v_crl_trend_overall AS
WITH days AS (
    SELECT day, sum(runs) AS runs, sum(mean_crl * runs) / sum(runs) AS mean_crl
    FROM learning_progress
    GROUP BY day
), windowed AS (
    SELECT day, runs, mean_crl,
           sum(mean_crl * runs) OVER wb AS sum_base, sum(runs) OVER wb AS runs_base
    FROM days
    WINDOW wb AS (ORDER BY day RANGE BETWEEN INTERVAL '7 days' PRECEDING AND INTERVAL '1 day' PRECEDING)
)
SELECT day, runs, mean_crl,
       sum_base / nullif(runs_base, 0) AS baseline_crl,
       mean_crl - sum_base / nullif(runs_base, 0) AS delta_vs_baseline
FROM windowed;

-- Experiments started per day and type, with how many concluded and were promoted.
CREATE VIEW v_experiments_per_day AS
SELECT (created_at AT TIME ZONE 'UTC')::date AS day,
       experiment_type,
       count(*) AS experiments,
       count(*) FILTER (WHERE status IN ('promoted', 'rolled_back', 'failed', 'incomplete')) AS concluded,
       count(*) FILTER (WHERE status = 'promoted') AS promoted
FROM experiments
GROUP BY 1, 2;
