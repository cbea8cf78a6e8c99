-- Curated samples, per-dataset statistics and golden datasets (docs/curation.md).
--
-- Every checked sample is a row, accepted or rejected with its reason: nothing
-- the curator saw is silently dropped. Content is the REDACTED text; PII never
-- reaches this database.
CREATE TABLE dataset_samples (
    sample_id         text             PRIMARY KEY,  -- uuid5 of doer, run and artifact
    event_id          uuid             NOT NULL UNIQUE,  -- the SampleCurated event
    dataset           text             NOT NULL,     -- "{doer}/{phase}"
    doer              text             NOT NULL,
    run_id            text             NOT NULL,     -- the source run
    source_event_id   uuid,                          -- the RunCompleted bundle
    phase             text             NOT NULL,
    policy_id         text             NOT NULL,
    policy_version    integer          NOT NULL,
    model             text,
    artifact_id       text             NOT NULL,
    kind              text             NOT NULL,
    origin            text             NOT NULL CHECK (origin IN ('human', 'ai-generated', 'hybrid')),
    content           text             NOT NULL,     -- redacted
    content_hash      text             NOT NULL CHECK (content_hash ~ '^[0-9a-f]{64}$'),
    redactions        jsonb            NOT NULL DEFAULT '{}',  -- placeholder kind -> count
    labels            jsonb            NOT NULL,
    accepted          boolean          NOT NULL,
    reject_reason     text,                          -- e.g. "near_duplicate:<sample_id>"
    reject_kind       text             GENERATED ALWAYS AS (split_part(reject_reason, ':', 1)) STORED,
    near_duplicate_of text[]           NOT NULL DEFAULT '{}',
    self_loop_of      text,
    diversity         double precision CHECK (diversity BETWEEN 0 AND 1),
    run_occurred_at   timestamptz,
    curated_at        timestamptz      NOT NULL,
    created_at        timestamptz      NOT NULL DEFAULT now(),
    curator           text,                          -- the app id that curated it
    CHECK (accepted = (reject_reason IS NULL))
);

-- Exact deduplication across a dataset, whatever happens upstream: at most one
-- accepted sample per dataset and content hash.
CREATE UNIQUE INDEX dataset_samples_one_per_content
    ON dataset_samples (dataset, content_hash) WHERE accepted;
CREATE INDEX dataset_samples_dataset_time ON dataset_samples (dataset, created_at);
CREATE INDEX dataset_samples_doer ON dataset_samples (doer);
CREATE INDEX dataset_samples_run ON dataset_samples (run_id);

-- The curator already rejects exact duplicates; should an accepted duplicate
-- arrive anyway (its state lost, two workers during a rebalance), it is stored
-- as the reject it is instead of failing the batch. A row-level BEFORE trigger
-- sees the rows inserted before it by the same statement; the unique index
-- above covers concurrent transactions.
CREATE FUNCTION dataset_sample_exact_duplicate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    first_id text;
BEGIN
    IF NEW.accepted THEN
        SELECT sample_id INTO first_id FROM dataset_samples
        WHERE dataset = NEW.dataset AND content_hash = NEW.content_hash AND accepted
              AND sample_id <> NEW.sample_id
        LIMIT 1;
        IF first_id IS NOT NULL THEN
            NEW.accepted := false;
            NEW.reject_reason := 'exact_duplicate';
            NEW.near_duplicate_of := ARRAY[first_id];
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER trigger_dataset_sample_exact_duplicate
    BEFORE INSERT ON dataset_samples
    FOR EACH ROW EXECUTE FUNCTION dataset_sample_exact_duplicate();

-- Per dataset: how many samples were checked and accepted, the clean rate, the
-- contamination rate (duplicates and self-loops; low diversity is a quality
-- signal, not contamination) and the rejects by reason.
CREATE VIEW v_dataset_stats AS
WITH totals AS (
    SELECT dataset, min(doer) AS doer,
           count(*) AS checked,
           count(*) FILTER (WHERE accepted) AS accepted,
           count(*) FILTER (
               WHERE reject_kind IN ('self_loop', 'exact_duplicate', 'near_duplicate')
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

-- A golden dataset: a dataset's accepted samples frozen under a name and
-- version, with the manifest (sample_id -> content_hash) and its hash
-- (learning/golden.py). Nothing about it changes after it is frozen.
CREATE TABLE golden_datasets (
    name          text        NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
    version       integer     NOT NULL CHECK (version >= 1),
    dataset       text        NOT NULL,              -- the dataset it was frozen from
    frozen_at     timestamptz NOT NULL DEFAULT now(),
    frozen_by     text        NOT NULL,
    manifest      jsonb       NOT NULL,
    manifest_hash text        NOT NULL CHECK (manifest_hash ~ '^[0-9a-f]{64}$'),
    sample_count  integer     NOT NULL CHECK (sample_count >= 0),
    PRIMARY KEY (name, version)
);

-- The frozen samples themselves, copied, so the dataset may go on (or be
-- pruned) while the golden copy stays as it was.
CREATE TABLE golden_dataset_samples (
    golden_name    text    NOT NULL,
    golden_version integer NOT NULL,
    sample_id      text    NOT NULL,
    doer           text    NOT NULL,
    run_id         text    NOT NULL,
    artifact_id    text    NOT NULL,
    kind           text    NOT NULL,
    origin         text    NOT NULL,
    content        text    NOT NULL,
    content_hash   text    NOT NULL,
    redactions     jsonb   NOT NULL,
    labels         jsonb   NOT NULL,
    PRIMARY KEY (golden_name, golden_version, sample_id),
    -- Deferred: the samples are copied first, then the golden_datasets row
    -- that closes the set is inserted in the same transaction.
    FOREIGN KEY (golden_name, golden_version) REFERENCES golden_datasets (name, version)
        DEFERRABLE INITIALLY DEFERRED
);

-- Immutability, enforced here and not only in code: a frozen golden dataset
-- and its samples are never updated or deleted, and no sample is added to a
-- golden dataset once its golden_datasets row exists.
CREATE FUNCTION refuse_golden_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF EXISTS (SELECT 1 FROM golden_datasets
                   WHERE name = NEW.golden_name AND version = NEW.golden_version) THEN
            RAISE EXCEPTION 'golden dataset %@% is frozen: no sample can be added',
                NEW.golden_name, NEW.golden_version USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'golden datasets are frozen: % on % refused; freeze a new version instead',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER trigger_golden_datasets_frozen
    BEFORE UPDATE OR DELETE ON golden_datasets
    FOR EACH ROW EXECUTE FUNCTION refuse_golden_change();
CREATE TRIGGER trigger_golden_datasets_no_truncate
    BEFORE TRUNCATE ON golden_datasets
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_golden_change();
CREATE TRIGGER trigger_golden_dataset_samples_frozen
    BEFORE INSERT OR UPDATE OR DELETE ON golden_dataset_samples
    FOR EACH ROW EXECUTE FUNCTION refuse_golden_change();
CREATE TRIGGER trigger_golden_dataset_samples_no_truncate
    BEFORE TRUNCATE ON golden_dataset_samples
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_golden_change();
