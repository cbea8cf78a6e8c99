-- The key-admin audit records the database role and time that wrote it, not values given.
--
-- signing_key_events.db_role and .at were defaults only, so the key-admin role
-- could insert any role name and any time (a retirement back-dated, or put in
-- the future, moves which signatures the retired key still vouches for); and
-- operator_key_events named only the self-declared --actor. A trigger now sets
-- both tables' db_role to the role that inserted the row and at to the
-- insertion time, whatever the INSERT says. operator_key_events gets db_role;
-- its rows from before this migration have none (NULL: not recorded then).
ALTER TABLE operator_key_events ADD COLUMN db_role name;
ALTER TABLE operator_key_events ALTER COLUMN db_role SET DEFAULT current_user;

CREATE FUNCTION key_event_written_by() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.db_role := current_user;
    NEW.at := clock_timestamp();
    RETURN NEW;
END;
$$;

CREATE TRIGGER trigger_signing_key_event_written_by
    BEFORE INSERT ON signing_key_events
    FOR EACH ROW EXECUTE FUNCTION key_event_written_by();

CREATE TRIGGER trigger_operator_key_event_written_by
    BEFORE INSERT ON operator_key_events
    FOR EACH ROW EXECUTE FUNCTION key_event_written_by();
