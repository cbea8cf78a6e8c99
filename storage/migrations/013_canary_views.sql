-- Views of the console's canary pages (issue 18): deployments with their latest
-- decision, and each decision's always-valid interval against the results it saw.

-- Every shadow and canary deployment with where it stands and its latest decision.
-- A deployment is in flight until it ends (ended_at); a paused one is still in flight.
-- state: running | paused | promoted | rolled_back | advanced (a shadow that became a canary).
CREATE VIEW v_canary_deployments AS
SELECT d.deployment_id, d.doer, d.mode,
       d.policy_id AS candidate_policy_id, d.version AS candidate_version,
       d.control_policy_id, d.control_version,
       d.step, d.allocation, d.steps,
       d.started_at, d.ended_at, d.outcome, d.paused_at, d.paused_reason,
       d.ended_at IS NULL AS in_flight,
       CASE WHEN d.ended_at IS NOT NULL THEN d.outcome
            WHEN d.paused_at IS NOT NULL THEN 'paused'
            ELSE 'running' END AS state,
       coalesce(latest.decisions, 0) AS decisions,
       latest.action AS latest_action, latest.reason AS latest_reason,
       latest.decided_at AS latest_decided_at
FROM shadow_deployments d
LEFT JOIN LATERAL (
    SELECT dd.action, dd.reason, dd.decided_at,
           count(*) OVER () AS decisions
    FROM deployment_decisions dd
    WHERE dd.deployment_id = d.deployment_id
    ORDER BY dd.decided_at DESC, dd.id DESC
    LIMIT 1
) latest ON true;

-- One row per decision: the results both arms had (control_count + candidate_count),
-- the estimated difference of the candidate's CRL against the control's and its
-- always-valid interval (null while not yet estimable), as the decision's report holds them.
CREATE VIEW v_canary_intervals AS
SELECT id, deployment_id, doer, action, reason, step, decided_at,
       (report ->> 'control_count')::bigint + (report ->> 'candidate_count')::bigint AS results,
       (report ->> 'control_count')::bigint AS control_count,
       (report ->> 'candidate_count')::bigint AS candidate_count,
       (report ->> 'control_mean')::double precision AS control_mean,
       (report ->> 'candidate_mean')::double precision AS candidate_mean,
       (report ->> 'delta')::double precision AS delta,
       (report ->> 'ci_low')::double precision AS ci_low,
       (report ->> 'ci_high')::double precision AS ci_high,
       (report ->> 'p_value')::double precision AS p_value,
       (report ->> 'confidence')::double precision AS confidence
FROM deployment_decisions;
