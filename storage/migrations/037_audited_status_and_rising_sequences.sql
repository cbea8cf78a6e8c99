-- What is live changes only with its audit row, and a doer's policy-change numbers only
-- rise by one (found by a red-team trial, 2026-12-06).
--
-- The worker's role may UPDATE policies (the status is the one column it moves) and
-- write policy_change_sequences. With only those grants, one UPDATE made a rolled-back
-- version active without a command or an audit row, and the policy stage's next change
-- published it, signed; deleting a doer's sequence row (or setting it high) made every
-- running Router refuse the doer's later changes, an emergency rollback among them.
-- Triggers hold the rules for every role, the owner included.

-- A version's status moves only together with the applied policy_promotions row that
-- says so, written in the same transaction (storage/policy_commands.py writes the row,
-- then the status): the row names the version with its from and to status, or, for the
-- active version a promotion archives, names it as the previous version.
CREATE FUNCTION check_policy_status_audited() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NEW;
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM policy_promotions p
        WHERE p.xmin = pg_current_xact_id()::xid
          AND p.outcome = 'applied'
          AND p.doer = OLD.doer
          AND (
              (p.policy_id = OLD.policy_id AND p.version = OLD.version
               AND p.from_status = OLD.status AND p.to_status = NEW.status)
              OR (OLD.status = 'active' AND NEW.status = 'archived'
                  AND p.previous_policy_id = OLD.policy_id
                  AND p.previous_version = OLD.version)
          )
    ) THEN
        RAISE EXCEPTION 'policy %@% may move from % to % only with its applied '
            'policy_promotions row, written in the same transaction',
            OLD.policy_id, OLD.version, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER trigger_policy_status_audited
    BEFORE UPDATE OF status ON policies
    FOR EACH ROW EXECUTE FUNCTION check_policy_status_audited();

-- A doer's sequence starts at 1, rises by exactly one per change published, and is kept.
CREATE FUNCTION check_policy_change_sequence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.sequence <> 1 THEN
            RAISE EXCEPTION 'the policy-change sequence of % starts at 1, not %',
                NEW.doer, NEW.sequence USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'the policy-change sequence of % is kept: Routers refuse numbers '
            'below the last they took', OLD.doer USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.doer IS DISTINCT FROM OLD.doer OR NEW.sequence <> OLD.sequence + 1 THEN
        RAISE EXCEPTION 'the policy-change sequence of % is %: only % may follow, not % of %',
            OLD.doer, OLD.sequence, OLD.sequence + 1, NEW.sequence, NEW.doer
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER trigger_policy_change_sequence_rises
    BEFORE INSERT OR UPDATE OR DELETE ON policy_change_sequences
    FOR EACH ROW EXECUTE FUNCTION check_policy_change_sequence();
-- (Not refuse_audit_change: migration 021's grants take UPDATE from the tables it guards.)
CREATE TRIGGER trigger_policy_change_sequence_no_truncate
    BEFORE TRUNCATE ON policy_change_sequences
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_policy_delete();
