-- Erasing a person's data (issue 17, "Privacy"): `learnops dataset erase`.
-- See docs/curation.md ("Erasing a subject") and docs/security.md ("Privacy").
--
-- A subject is matched as a case-insensitive substring (after NFC
-- normalisation and trimming) of a sample's content or labels. Stored text is
-- already redacted, so an email or phone the redactor caught is a placeholder
-- and cannot be matched any more; what is matched is what passed the redactor
-- (user ids, names, handles).
--
-- What the erasure does, in one transaction, inside learnops_erase_subject():
--   dataset_samples         matching rows are deleted;
--   golden_dataset_samples  matching rows of every version, frozen or not,
--                           become tombstones ('[ERASED]', no labels, no
--                           redactions; the content_hash stays, so the old
--                           manifest still says what was frozen), each listed in
--                           erased_golden_samples;
--   golden_datasets         a golden dataset whose latest version held the
--                           subject gets a NEW version without those samples;
--   blobs                   text/plain blobs (replay inputs: a golden sample's
--                           text) holding the subject are deleted, and
--   offline_replay_tasks    tasks that read one point at the '[ERASED]' blob;
--   subject_erasures        one audit row: who, when, why, rows per table, the
--                           new versions, and the subject only as a keyed hash.
-- The frozen tables' triggers allow these tombstones only inside that function
-- (a transaction-local setting it sets, checked together with the table owner
-- as current_user), and only the migrating role may execute it.

-- The key of the subject hash, readable by the owner alone: a schema no other
-- role has USAGE on (learnops_grant_roles grants only in public).
CREATE SCHEMA learnops_private;
REVOKE ALL ON SCHEMA learnops_private FROM PUBLIC;
CREATE TABLE learnops_private.erasure_key (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    key       bytea   NOT NULL CHECK (length(key) = 32)
);
-- gen_random_uuid() draws from the server's strong random source.
INSERT INTO learnops_private.erasure_key (key)
VALUES (sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')));

-- HMAC-SHA256 (RFC 2104) of ``message`` under ``key`` (at most 64 bytes): the
-- server has sha256() but, without pgcrypto, no hmac().
CREATE FUNCTION learnops_private.hmac_sha256(key bytea, message bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    padded bytea := key || decode(repeat('00', 64 - length(key)), 'hex');
    inner_pad bytea := padded;
    outer_pad bytea := padded;
BEGIN
    FOR i IN 0..63 LOOP
        inner_pad := set_byte(inner_pad, i, get_byte(padded, i) # 54);   -- 0x36
        outer_pad := set_byte(outer_pad, i, get_byte(padded, i) # 92);   -- 0x5c
    END LOOP;
    RETURN sha256(outer_pad || sha256(inner_pad || message));
END
$$;

-- One row per erasure. Append-only; written only by learnops_erase_subject().
CREATE TABLE subject_erasures (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_hash text        NOT NULL CHECK (subject_hash ~ '^[0-9a-f]{64}$'),  -- HMAC-SHA256
    actor        text        NOT NULL CHECK (actor <> ''),
    reason       text        NOT NULL,
    row_counts   jsonb       NOT NULL,   -- table -> rows erased
    new_versions jsonb       NOT NULL,   -- golden dataset -> the version made without the subject
    db_role      name        NOT NULL DEFAULT session_user,  -- the login, whatever actor says
    erased_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subject_erasures_subject ON subject_erasures (subject_hash);

-- Which golden samples are tombstones, and by which erasure. Append-only.
CREATE TABLE erased_golden_samples (
    golden_name    text    NOT NULL,
    golden_version integer NOT NULL,
    sample_id      text    NOT NULL,
    erasure_id     bigint  NOT NULL REFERENCES subject_erasures (id),
    PRIMARY KEY (golden_name, golden_version, sample_id),
    FOREIGN KEY (golden_name, golden_version) REFERENCES golden_datasets (name, version)
);

-- True inside learnops_erase_subject() only: its transaction-local setting, and
-- the owner as current_user (a SECURITY DEFINER function runs as its owner; a
-- worker that set the setting itself is still not the owner).
CREATE FUNCTION learnops_erasing() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('learnops.erasing', true), '') = 'on'
       AND current_user = (SELECT tableowner FROM pg_tables
                            WHERE schemaname = 'public' AND tablename = 'golden_datasets')
$$;

CREATE FUNCTION refuse_erasure_record_forgery() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT learnops_erasing() THEN
        RAISE EXCEPTION '% is written only by learnops_erase_subject()', TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

-- Both records: inserted only by the erasure, never changed afterwards.
DO $$
DECLARE
    record_table text;
BEGIN
    FOREACH record_table IN ARRAY ARRAY['subject_erasures', 'erased_golden_samples'] LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE INSERT ON %I FOR EACH ROW '
                       'EXECUTE FUNCTION refuse_erasure_record_forgery()',
                       'trigger_' || record_table || '_by_erasure', record_table);
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %I FOR EACH ROW '
                       'EXECUTE FUNCTION refuse_audit_change()',
                       'trigger_' || record_table || '_append_only', record_table);
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT '
                       'EXECUTE FUNCTION refuse_audit_change()',
                       'trigger_' || record_table || '_no_truncate', record_table);
    END LOOP;
END
$$;

-- The frozen golden samples, as in 004, with one exception: during an erasure
-- a golden sample may become a tombstone (content, labels and redactions only).
-- Inserts and deletes keep 004's trigger; updates get one of their own.
DROP TRIGGER trigger_golden_dataset_samples_frozen ON golden_dataset_samples;
CREATE TRIGGER trigger_golden_dataset_samples_frozen
    BEFORE INSERT OR DELETE ON golden_dataset_samples
    FOR EACH ROW EXECUTE FUNCTION refuse_golden_change();

CREATE FUNCTION refuse_golden_change_but_erasure() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF learnops_erasing()
        AND NEW.content = '[ERASED]' AND NEW.labels = '{}'::jsonb AND NEW.redactions = '{}'::jsonb
        AND (NEW.golden_name, NEW.golden_version, NEW.sample_id, NEW.doer, NEW.run_id,
             NEW.artifact_id, NEW.kind, NEW.origin, NEW.content_hash)
            IS NOT DISTINCT FROM
            (OLD.golden_name, OLD.golden_version, OLD.sample_id, OLD.doer, OLD.run_id,
             OLD.artifact_id, OLD.kind, OLD.origin, OLD.content_hash) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'golden datasets are frozen: UPDATE on % refused; freeze a new version instead (only `learnops dataset erase` may tombstone a sample)',
        TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;
CREATE TRIGGER trigger_golden_dataset_samples_tombstone_only
    BEFORE UPDATE ON golden_dataset_samples
    FOR EACH ROW EXECUTE FUNCTION refuse_golden_change_but_erasure();

-- Does ``value`` hold the (already normalised, lower-case) ``needle``?
CREATE FUNCTION learnops_holds_subject(value text, needle text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT strpos(lower(normalize(value, NFC)), needle) > 0
$$;

-- Erase SUBJECT everywhere (see the top of this file); with dry_run, count only.
-- Returns {subject_hash, rows: {table: n}, new_versions: {golden: version},
-- erasure_id (null on a dry run)}.
CREATE FUNCTION learnops_erase_subject(
    subject text, reason text, actor text, dry_run boolean
) RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    needle       text := lower(normalize(btrim(subject), NFC));
    hash         text;
    counts       jsonb;
    versions     jsonb := '{}'::jsonb;
    erasure      bigint;
    golden       record;
    next_version integer;
    manifest     jsonb;
    canonical    text;
BEGIN
    IF char_length(needle) < 3 OR needle ~ '^\[[a-z_]+\]$' THEN
        RAISE EXCEPTION 'a subject must be at least 3 characters and not a redaction placeholder'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(btrim(actor), '') = '' THEN
        RAISE EXCEPTION 'an erasure needs an actor' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    hash := encode(learnops_private.hmac_sha256(
        (SELECT key FROM learnops_private.erasure_key), convert_to(needle, 'UTF8')), 'hex');
    -- One erasure at a time, and no freeze during one (storage/datasets.freeze
    -- holds this lock shared): what is read below is what is erased.
    PERFORM pg_advisory_xact_lock(hashtext('learnops:erasure'));

    CREATE TEMP TABLE erasing_golden ON COMMIT DROP AS
        SELECT golden_name, golden_version, sample_id FROM golden_dataset_samples s
         WHERE (learnops_holds_subject(s.content, needle)
                OR learnops_holds_subject(s.labels::text, needle))
           AND NOT EXISTS (SELECT 1 FROM erased_golden_samples e
                            WHERE (e.golden_name, e.golden_version, e.sample_id)
                                = (s.golden_name, s.golden_version, s.sample_id));
    -- Replay inputs: a golden sample's text as a text/plain blob (storage/experiments.py).
    CREATE TEMP TABLE erasing_blobs ON COMMIT DROP AS
        SELECT sha256 FROM blobs
         WHERE media_type = 'text/plain' AND content <> convert_to('[ERASED]', 'UTF8')
           AND learnops_holds_subject(convert_from(content, 'UTF8'), needle);
    counts := jsonb_build_object(
        'blobs', (SELECT count(*) FROM erasing_blobs),
        'offline_replay_tasks',
        (SELECT count(*) FROM offline_replay_tasks WHERE input_hash IN (SELECT sha256 FROM erasing_blobs)),
        'dataset_samples',
        (SELECT count(*) FROM dataset_samples
          WHERE learnops_holds_subject(content, needle)
             OR learnops_holds_subject(labels::text, needle)),
        'golden_dataset_samples', (SELECT count(*) FROM erasing_golden),
        'golden_datasets',
        (SELECT count(*) FROM (SELECT DISTINCT golden_name, golden_version FROM erasing_golden) v)
    );

    -- A new version of each golden dataset whose latest version holds the subject.
    FOR golden IN
        SELECT g.name, g.version, g.dataset FROM golden_datasets g
         WHERE g.version = (SELECT max(version) FROM golden_datasets WHERE name = g.name)
           AND EXISTS (SELECT 1 FROM erasing_golden e
                        WHERE e.golden_name = g.name AND e.golden_version = g.version)
         ORDER BY g.name
    LOOP
        PERFORM pg_advisory_xact_lock(hashtext('golden:' || golden.name));
        next_version := golden.version + 1;
        versions := versions || jsonb_build_object(golden.name, next_version);
        CONTINUE WHEN dry_run;
        INSERT INTO golden_dataset_samples (
            golden_name, golden_version, sample_id, doer, run_id, artifact_id, kind, origin,
            content, content_hash, redactions, labels)
        SELECT golden.name, next_version, s.sample_id, s.doer, s.run_id, s.artifact_id, s.kind,
               s.origin, s.content, s.content_hash, s.redactions, s.labels
          FROM golden_dataset_samples s
         WHERE s.golden_name = golden.name AND s.golden_version = golden.version
           AND NOT EXISTS (SELECT 1 FROM erasing_golden e
                            WHERE (e.golden_name, e.golden_version, e.sample_id)
                                = (s.golden_name, s.golden_version, s.sample_id))
           AND NOT EXISTS (SELECT 1 FROM erased_golden_samples e
                            WHERE (e.golden_name, e.golden_version, e.sample_id)
                                = (s.golden_name, s.golden_version, s.sample_id));
        -- The manifest and its hash as learning/golden.py makes them: canonical
        -- JSON with sorted keys (code-point order: COLLATE "C"), no whitespace.
        SELECT coalesce(jsonb_object_agg(sample_id, content_hash), '{}'::jsonb),
               '{' || coalesce(string_agg(to_json(sample_id)::text || ':'
                                          || to_json(content_hash)::text, ','
                                          ORDER BY sample_id COLLATE "C"), '') || '}'
          INTO manifest, canonical
          FROM golden_dataset_samples
         WHERE golden_name = golden.name AND golden_version = next_version;
        INSERT INTO golden_datasets
            (name, version, dataset, frozen_by, manifest, manifest_hash, sample_count)
        VALUES (golden.name, next_version, golden.dataset, actor, manifest,
                encode(sha256(convert_to(canonical, 'UTF8')), 'hex'),
                (SELECT count(*) FROM jsonb_object_keys(manifest)));
    END LOOP;

    IF dry_run THEN
        RETURN jsonb_build_object('subject_hash', hash, 'rows', counts,
                                  'new_versions', versions, 'erasure_id', NULL);
    END IF;

    PERFORM set_config('learnops.erasing', 'on', true);
    INSERT INTO subject_erasures (subject_hash, actor, reason, row_counts, new_versions)
    VALUES (hash, btrim(actor), coalesce(reason, ''), counts, versions)
    RETURNING id INTO erasure;
    INSERT INTO erased_golden_samples (golden_name, golden_version, sample_id, erasure_id)
    SELECT golden_name, golden_version, sample_id, erasure FROM erasing_golden;
    UPDATE golden_dataset_samples s
       SET content = '[ERASED]', labels = '{}'::jsonb, redactions = '{}'::jsonb
      FROM erasing_golden e
     WHERE (e.golden_name, e.golden_version, e.sample_id)
         = (s.golden_name, s.golden_version, s.sample_id);
    -- A replay task that read the subject's text now points at a tombstone blob;
    -- the blob itself goes (it is content-addressed, so it cannot be edited).
    IF EXISTS (SELECT 1 FROM erasing_blobs) THEN
        INSERT INTO blobs (sha256, content, media_type)
        VALUES (encode(sha256(convert_to('[ERASED]', 'UTF8')), 'hex'),
                convert_to('[ERASED]', 'UTF8'), 'text/plain')
        ON CONFLICT (sha256) DO NOTHING;
        UPDATE offline_replay_tasks
           SET input_hash = encode(sha256(convert_to('[ERASED]', 'UTF8')), 'hex')
         WHERE input_hash IN (SELECT sha256 FROM erasing_blobs);
        DELETE FROM blobs WHERE sha256 IN (SELECT sha256 FROM erasing_blobs);
    END IF;
    DELETE FROM dataset_samples
     WHERE learnops_holds_subject(content, needle)
        OR learnops_holds_subject(labels::text, needle);
    PERFORM set_config('learnops.erasing', '', true);
    RETURN jsonb_build_object('subject_hash', hash, 'rows', counts,
                              'new_versions', versions, 'erasure_id', erasure);
END
$$;
-- The migrating role only: not the worker, the reader or the key administrator.
REVOKE EXECUTE ON FUNCTION learnops_erase_subject(text, text, text, boolean) FROM PUBLIC;
