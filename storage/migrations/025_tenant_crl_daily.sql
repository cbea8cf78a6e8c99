-- CRL per day per tenant too (docs/console.md, "Tenants"; docs/security.md, "Tenants").
--
-- crl_daily (017) folded every tenant's runs of a doer together, so the console
-- could show a doer's trend only across its tenants. It now keeps one row per
-- tenant as well: the views that sum it (per phase, per doer and phase, per
-- policy) are unchanged, and the console filters by tenant before it sums.
--
-- The table is rebuilt from crl_results inside this migration's transaction,
-- with crl_results locked against inserts meanwhile, so no run is counted
-- twice or lost between the old fold and the new one.

LOCK TABLE crl_results IN SHARE ROW EXCLUSIVE MODE;

ALTER TABLE crl_daily ADD COLUMN tenant_id text;
TRUNCATE crl_daily;
ALTER TABLE crl_daily DROP CONSTRAINT crl_daily_pkey;

CREATE OR REPLACE FUNCTION crl_daily_fold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO crl_daily AS cd (doer, phase, policy_id, policy_version, tenant_id, day,
                                 runs, mean_crl, m2)
    SELECT doer, phase, policy_id, policy_version, tenant_id,
           (occurred_at AT TIME ZONE 'UTC')::date,
           count(*),
           avg(loss),
           coalesce(var_pop(loss) * count(*), 0)
    FROM inserted
    WHERE replay_id IS NULL AND NOT shadow
    GROUP BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (doer, phase, policy_id, policy_version, tenant_id, day) DO UPDATE SET
        runs     = cd.runs + EXCLUDED.runs,
        mean_crl = cd.mean_crl
                   + (EXCLUDED.mean_crl - cd.mean_crl) * EXCLUDED.runs / (cd.runs + EXCLUDED.runs),
        m2       = cd.m2 + EXCLUDED.m2
                   + (EXCLUDED.mean_crl - cd.mean_crl) ^ 2 * cd.runs * EXCLUDED.runs
                     / (cd.runs + EXCLUDED.runs),
        updated_at = now();
    RETURN NULL;
END
$$;

INSERT INTO crl_daily (doer, phase, policy_id, policy_version, tenant_id, day,
                       runs, mean_crl, m2)
SELECT doer, phase, policy_id, policy_version, tenant_id,
       (occurred_at AT TIME ZONE 'UTC')::date,
       count(*), avg(loss), coalesce(var_pop(loss) * count(*), 0)
FROM crl_results
WHERE replay_id IS NULL AND NOT shadow
GROUP BY 1, 2, 3, 4, 5, 6;

ALTER TABLE crl_daily
    ALTER COLUMN tenant_id SET NOT NULL,
    ADD PRIMARY KEY (doer, phase, policy_id, policy_version, tenant_id, day);
CREATE INDEX crl_daily_tenant_day ON crl_daily (tenant_id, day);
