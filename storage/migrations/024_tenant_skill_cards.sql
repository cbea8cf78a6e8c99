-- Skill cards per tenant (docs/skill-cards.md, "Tenants"; docs/security.md, "Tenants").
--
-- A card summarises one tenant's runs of one doer: the skills stage keeps its
-- daily statistics per tenant and doer, so nothing one tenant's runs did shows
-- on another tenant's card. One current card per tenant and doer.
--
-- Backfill: a card made before this migration mixed every tenant's runs; it is
-- kept, under 'default' (the tenant of what predates tenants, as 023), and is
-- superseded by the tenant cards the stage makes from then on.

ALTER TABLE skill_cards
    ADD COLUMN tenant_id text NOT NULL DEFAULT 'default'
        CONSTRAINT skill_cards_tenant_is_a_name
        CHECK (tenant_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$');
ALTER TABLE skill_cards ALTER COLUMN tenant_id DROP DEFAULT;

DROP INDEX skill_cards_one_current_per_doer;
DROP INDEX skill_cards_history;
CREATE UNIQUE INDEX skill_cards_one_current_per_tenant_doer
    ON skill_cards (tenant_id, doer) WHERE is_current;
CREATE INDEX skill_cards_history ON skill_cards (tenant_id, doer, id);
CREATE INDEX skill_cards_current_of_doer ON skill_cards (doer) WHERE is_current;

-- The console's ranking and failure modes, per tenant's card: a doer serving
-- two tenants is ranked once per tenant, and the API filters by tenant.
DROP VIEW v_skill_card_ranking;
CREATE VIEW v_skill_card_ranking AS
SELECT tenant_id, doer, as_of, runs, mean_crl, delta_7d, delta_30d, gate_pass_rate,
       policy_id, policy_version,
       (card ->> 'crl_mean_7d')::double precision AS crl_mean_7d,
       row_number() OVER (PARTITION BY tenant_id ORDER BY mean_crl ASC, doer) AS rank_best,
       row_number() OVER (PARTITION BY tenant_id ORDER BY mean_crl DESC, doer) AS rank_worst,
       row_number() OVER (ORDER BY mean_crl ASC, doer, tenant_id) AS rank_best_all,
       row_number() OVER (ORDER BY mean_crl DESC, doer, tenant_id) AS rank_worst_all
FROM skill_cards
WHERE is_current AND mean_crl IS NOT NULL;

DROP VIEW v_failure_modes;
CREATE VIEW v_failure_modes AS
SELECT c.tenant_id,
       f.key AS gate,
       count(*) AS doers,
       sum(f.value::bigint) AS failures
FROM skill_cards c
CROSS JOIN LATERAL jsonb_each_text(coalesce(c.card -> 'gate_failures_30d', '{}'::jsonb)) f
WHERE c.is_current AND f.value::bigint > 0
GROUP BY c.tenant_id, f.key;

-- New views: the default privileges of 021 grant them; this re-grants in case
-- the migrating role is not the one those defaults were set for.
SELECT learnops_grant_roles();
