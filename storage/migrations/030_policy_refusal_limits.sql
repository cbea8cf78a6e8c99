-- A refusal for a shadow or canary that asks for looser statistics than the service allows.
--
-- start_shadow and start_canary carry the canary's settings (its levels, margins,
-- sample sizes, guardrails) and traffic steps; the canary stage promotes by them.
-- The policy stage now refuses settings looser than its configuration's
-- canary.limits (learning.promotion.CanaryLimits) and audits the refusal as
-- 'limits', beside the kinds it had.
ALTER TABLE policy_promotions DROP CONSTRAINT policy_promotions_refusal_check;
ALTER TABLE policy_promotions ADD CONSTRAINT policy_promotions_refusal_check CHECK (
    refusal IN ('signature', 'lifecycle', 'unknown', 'conflict', 'artifact', 'limits')
);
