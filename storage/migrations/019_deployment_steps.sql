-- The step rules of a canary, kept by the database as well as by the code
-- (storage/deployments.py, learning/promotion.py): a deployment's traffic
-- moves one step at a time, only for its own doer, only with an operator's
-- approval when the deployment requires one, and every step-up or approval,
-- applied or refused, leaves one audit row.

-- One row per step-up decision or approval event; append-only. The row of an
-- applied move is written before the deployment's step changes, in the same
-- transaction, and the trigger below refuses a step change without it.
CREATE TABLE deployment_steps (
    id            bigserial   PRIMARY KEY,
    event_id      uuid        NOT NULL UNIQUE,
    deployment_id text        NOT NULL,
    doer          text        NOT NULL,
    action        text        NOT NULL CHECK (action IN ('step_up', 'approve')),
    from_step     integer,    -- NULL when the deployment was not found
    to_step       integer     NOT NULL,
    outcome       text        NOT NULL CHECK (outcome IN ('applied', 'refused')),
    refusal       text        CHECK (refusal IN ('rule', 'stale', 'signature')),
    actor         text        NOT NULL,
    reason        text        NOT NULL,  -- what the decision or the approver said
    verdict       text        NOT NULL,  -- what the store decided, and why
    occurred_at   timestamptz NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((outcome = 'refused') = (refusal IS NOT NULL)),
    CHECK (outcome = 'refused' OR to_step = from_step + 1)
);

CREATE INDEX deployment_steps_deployment ON deployment_steps (deployment_id, to_step);

CREATE TRIGGER trigger_deployment_steps_append_only
    BEFORE UPDATE OR DELETE ON deployment_steps
    FOR EACH ROW EXECUTE FUNCTION refuse_audit_change();
CREATE TRIGGER trigger_deployment_steps_no_truncate
    BEFORE TRUNCATE ON deployment_steps
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_audit_change();

CREATE FUNCTION check_deployment_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.doer IS DISTINCT FROM OLD.doer
       OR NEW.steps IS DISTINCT FROM OLD.steps
       OR NEW.require_approval IS DISTINCT FROM OLD.require_approval THEN
        RAISE EXCEPTION 'deployment %: its doer, steps and approval rule are fixed at its start',
            OLD.deployment_id USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.step IS NOT DISTINCT FROM OLD.step THEN
        RETURN NEW;
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

CREATE TRIGGER trigger_shadow_deployments_step_rules
    BEFORE UPDATE ON shadow_deployments
    FOR EACH ROW EXECUTE FUNCTION check_deployment_step();

-- The sequence number of each doer's signed policy changes: the policy stage
-- takes the next one for every PolicyChange it publishes, and a router refuses
-- a record whose number is below the last it took (a stale or replanted record
-- on the compacted topic cannot win at a restart).
CREATE TABLE policy_change_sequences (
    doer     text   PRIMARY KEY,
    sequence bigint NOT NULL CHECK (sequence > 0)
);
