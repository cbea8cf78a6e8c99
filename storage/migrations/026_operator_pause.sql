-- Operators pause and resume a live deployment (`learnops policy pause|resume`,
-- the signed pause_deployment and resume_deployment commands), and the
-- database holds a resume to the same rule as a step: it clears a pause only
-- with an applied, audited resume of the deployment's doer.

-- How many times an operator resumed the deployment, and when last. A router
-- and the canary stage take a view with more resumes as newer than a paused
-- one of the same step (models/policy_change.py, DeploymentRouting).
ALTER TABLE shadow_deployments
    ADD COLUMN resumes    integer NOT NULL DEFAULT 0 CHECK (resumes >= 0),
    ADD COLUMN resumed_at timestamptz;

-- deployment_steps audits pauses (an operator's, or a canary decision's) and
-- an operator's resumes beside step-ups and approvals; neither moves the step.
-- An applied row names the step it moved or held.
ALTER TABLE deployment_steps DROP CONSTRAINT deployment_steps_action_check;
ALTER TABLE deployment_steps DROP CONSTRAINT deployment_steps_check1;
ALTER TABLE deployment_steps
    ADD CONSTRAINT deployment_steps_action_check
        CHECK (action IN ('step_up', 'approve', 'pause', 'resume')),
    ADD CONSTRAINT deployment_steps_moves_one_step
        CHECK (outcome = 'refused'
               OR (from_step IS NOT NULL
                   AND ((action IN ('step_up', 'approve') AND to_step = from_step + 1)
                        OR (action IN ('pause', 'resume') AND to_step = from_step))));

CREATE OR REPLACE FUNCTION check_deployment_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.doer IS DISTINCT FROM OLD.doer
       OR NEW.steps IS DISTINCT FROM OLD.steps
       OR NEW.require_approval IS DISTINCT FROM OLD.require_approval THEN
        RAISE EXCEPTION 'deployment %: its doer, steps and approval rule are fixed at its start',
            OLD.deployment_id USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    -- A resume clears the pause and counts one more resume, with its audit row.
    IF NEW.resumes IS DISTINCT FROM OLD.resumes
       OR (OLD.paused_at IS NOT NULL AND NEW.paused_at IS NULL) THEN
        IF OLD.paused_at IS NULL OR NEW.paused_at IS NOT NULL
           OR NEW.resumes IS DISTINCT FROM OLD.resumes + 1 THEN
            RAISE EXCEPTION 'deployment %: a resume clears its pause and counts one resume',
                OLD.deployment_id USING ERRCODE = 'check_violation';
        END IF;
        IF (SELECT count(*) FROM deployment_steps s
            WHERE s.deployment_id = OLD.deployment_id
              AND s.doer = OLD.doer
              AND s.action = 'resume'
              AND s.outcome = 'applied') < NEW.resumes THEN
            RAISE EXCEPTION 'deployment % has no audited resume of doer %',
                OLD.deployment_id, OLD.doer USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    IF NEW.step IS NOT DISTINCT FROM OLD.step THEN
        RETURN NEW;
    END IF;
    IF OLD.paused_at IS NOT NULL THEN
        RAISE EXCEPTION 'deployment % is paused at step %: resume it before a step moves',
            OLD.deployment_id, OLD.step USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.step <> OLD.step + 1 THEN
        RAISE EXCEPTION 'deployment % is at step %: only step % may follow, not %',
            OLD.deployment_id, OLD.step, OLD.step + 1, NEW.step
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.allocation IS DISTINCT FROM OLD.steps[NEW.step + 1] THEN
        RAISE EXCEPTION 'deployment % step % serves %, not %',
            OLD.deployment_id, NEW.step, OLD.steps[NEW.step + 1], NEW.allocation
            USING ERRCODE = 'check_violation';
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM deployment_steps s
        WHERE s.deployment_id = OLD.deployment_id
          AND s.doer = OLD.doer
          AND s.to_step = NEW.step
          AND s.from_step = OLD.step
          AND s.action IN ('step_up', 'approve')
          AND s.outcome = 'applied'
          AND (s.action = 'approve' OR NOT OLD.require_approval)
    ) THEN
        RAISE EXCEPTION 'deployment % step % has no audited % of doer %',
            OLD.deployment_id, NEW.step,
            CASE WHEN OLD.require_approval THEN 'approval' ELSE 'step-up or approval' END,
            OLD.doer
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
