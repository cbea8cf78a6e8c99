-- Tenants kept apart (docs/security.md, "Tenants"; docs/curation.md, "Tenants").
--
-- Every curated sample and golden dataset now belongs to one tenant, and the
-- dataset key is tenant + doer + phase: a dataset is named
-- "{tenant}/{doer}/{phase}" (names hold no "/", so it splits one way only).
-- Exact deduplication (the unique index and the trigger of 004) is per
-- dataset, hence per tenant.
--
-- Backfill. A sample curated before this migration takes the tenant of its run
-- (crl_results), or 'default' when the run is not there; its dataset is renamed
-- to the three-part form. A golden dataset frozen before takes the tenant of its
-- samples when they are all one tenant's; one that mixed tenants gets '_mixed'
-- (not a name: no tenant can be called that), so it is shown to no tenant and
-- replayed for none. The curator's Faust state keeps its own pre-tenant records
-- under 'default' until they expire (curation.memory_days).

ALTER TABLE dataset_samples ADD COLUMN tenant_id text;

UPDATE dataset_samples AS s
   SET tenant_id = coalesce(
           (SELECT c.tenant_id FROM crl_results AS c WHERE c.run_id = s.run_id),
           'default');

-- A tenant id that is not a name (crl_results had looser ids) goes to 'default'.
UPDATE dataset_samples
   SET tenant_id = 'default'
 WHERE tenant_id !~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$';

UPDATE dataset_samples
   SET dataset = tenant_id || '/' || dataset
 WHERE dataset !~ '^[^/]+/[^/]+/[^/]+$';

ALTER TABLE dataset_samples
    ALTER COLUMN tenant_id SET NOT NULL,
    ADD CONSTRAINT dataset_samples_tenant_is_a_name
        CHECK (tenant_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
    ADD CONSTRAINT dataset_samples_dataset_of_tenant
        CHECK (split_part(dataset, '/', 1) = tenant_id);

CREATE INDEX dataset_samples_tenant ON dataset_samples (tenant_id, dataset, created_at);

-- Golden datasets: the frozen rows are immutable (004), so the backfill runs
-- with their triggers off, inside this migration's transaction.
ALTER TABLE golden_datasets ADD COLUMN tenant_id text;
ALTER TABLE golden_datasets DISABLE TRIGGER trigger_golden_datasets_frozen;
UPDATE golden_datasets AS g
   SET tenant_id = CASE
           WHEN (SELECT count(DISTINCT s.tenant_id) FROM dataset_samples AS s
                  JOIN golden_dataset_samples AS gs USING (sample_id)
                 WHERE gs.golden_name = g.name AND gs.golden_version = g.version) > 1
           THEN '_mixed'
           ELSE coalesce(
               (SELECT min(s.tenant_id) FROM dataset_samples AS s
                  JOIN golden_dataset_samples AS gs USING (sample_id)
                 WHERE gs.golden_name = g.name AND gs.golden_version = g.version),
               'default')
       END,
       dataset = CASE
           WHEN dataset ~ '^[^/]+/[^/]+/[^/]+$' THEN dataset
           ELSE 'default/' || dataset
       END;
ALTER TABLE golden_datasets ENABLE TRIGGER trigger_golden_datasets_frozen;

-- A new version made without naming its tenant (the erasure of 022 copies a
-- version) belongs to the tenant of the name's earlier versions.
CREATE FUNCTION golden_dataset_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.tenant_id IS NULL THEN
        SELECT g.tenant_id INTO NEW.tenant_id FROM golden_datasets AS g
         WHERE g.name = NEW.name ORDER BY g.version DESC LIMIT 1;
    END IF;
    -- One name, one tenant: a version of another tenant's golden dataset is refused.
    IF EXISTS (SELECT 1 FROM golden_datasets AS g
                WHERE g.name = NEW.name AND g.tenant_id <> NEW.tenant_id) THEN
        RAISE EXCEPTION 'golden dataset % belongs to another tenant', NEW.name
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER trigger_golden_dataset_tenant
    BEFORE INSERT ON golden_datasets
    FOR EACH ROW EXECUTE FUNCTION golden_dataset_tenant();

ALTER TABLE golden_datasets ALTER COLUMN tenant_id SET NOT NULL;
CREATE INDEX golden_datasets_tenant ON golden_datasets (tenant_id, name, version);
