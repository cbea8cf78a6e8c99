-- The worker reads the repartition journal (it refuses to start under an app id whose
-- move has not finished) and never writes it: a worker login that could mark a move
-- finished, or delete its row, could start with part of the state and undercount.
-- Only `learnops topics repartition` writes it, as the migrating (admin) role.
--
-- `learnops db migrate` calls learnops_grant_roles() after every run; 021's grants
-- stay as they were, under a name of their own, and this one takes the journal's
-- writes away after them.
ALTER FUNCTION learnops_grant_roles() RENAME TO learnops_grant_roles_021;

CREATE FUNCTION learnops_grant_roles() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM learnops_grant_roles_021();
    REVOKE INSERT, UPDATE, DELETE ON repartitions FROM learnops_worker;
END
$$;
-- The migrating role only, as 021's.
REVOKE EXECUTE ON FUNCTION learnops_grant_roles() FROM PUBLIC;

SELECT learnops_grant_roles();
