-- Why an applied command was given, beside who signed it.
--
-- applied_commands is the audit of the commands whose effect lives outside the
-- policy store (a bandit's freeze and unfreeze): it named the verified signer
-- but not the operator's stated reason, which survived only on a compacted
-- topic. Rows recorded before this migration have none (NULL).
ALTER TABLE applied_commands ADD COLUMN reason text;
