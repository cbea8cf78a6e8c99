-- The operator resumes a canary decision saw (DecisionMade.resumes), stored with it.
--
-- An approval of a gated canary applies only once the canary has asked for the
-- step (storage/deployments.py, ASKED), and an ask made before the deployment's
-- last resume no longer stands: on a resume the canary drops it and asks again on
-- new evidence. Telling the two apart by time mixed the canary worker's clock
-- (decided_at) with PostgreSQL's (resumed_at), and a canary behind on the policy
-- changes could make an ask on pre-resume evidence after the resume. The count
-- of resumes the decision saw is the deployment's own clock.
ALTER TABLE deployment_decisions ADD COLUMN resumes integer NOT NULL DEFAULT 0
    CHECK (resumes >= 0);

-- Asks stored before this column, after a resume, by the time rule they were judged by.
UPDATE deployment_decisions dd
SET resumes = d.resumes
FROM shadow_deployments d
WHERE dd.deployment_id = d.deployment_id
  AND d.resumes > 0
  AND d.resumed_at IS NOT NULL
  AND dd.decided_at >= d.resumed_at;
