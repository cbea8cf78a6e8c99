-- A sample copying a golden (evaluation) dataset's is rejected golden_copy (the curator,
-- 2026-12-08) and counts as contamination, as the guard's stats and alert count it:
-- the view's contamination rate gains that reason. Otherwise as in 004.
CREATE OR REPLACE VIEW v_dataset_stats AS
WITH totals AS (
    SELECT dataset, min(doer) AS doer,
           count(*) AS checked,
           count(*) FILTER (WHERE accepted) AS accepted,
           count(*) FILTER (
               WHERE reject_kind IN ('golden_copy', 'self_loop', 'exact_duplicate', 'near_duplicate')
           ) AS contaminated,
           min(created_at) AS first_sample_at,
           max(created_at) AS last_sample_at
    FROM dataset_samples GROUP BY dataset
), reasons AS (
    SELECT dataset, jsonb_object_agg(reject_kind, n ORDER BY reject_kind) AS rejected
    FROM (
        SELECT dataset, reject_kind, count(*) AS n
        FROM dataset_samples WHERE NOT accepted GROUP BY dataset, reject_kind
    ) AS per_reason
    GROUP BY dataset
)
SELECT t.dataset, t.doer, t.checked, t.accepted,
       t.accepted::double precision / t.checked AS clean_rate,
       t.contaminated::double precision / t.checked AS contamination_rate,
       coalesce(r.rejected, '{}'::jsonb) AS rejected,
       t.first_sample_at, t.last_sample_at
FROM totals AS t LEFT JOIN reasons AS r USING (dataset);
