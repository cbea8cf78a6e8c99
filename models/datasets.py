"""Stored records of curation: a dataset's statistics and a golden dataset."""

from __future__ import annotations

from typing import Final

from models.base import (
    ContractModel,
    Count,
    Identifier,
    Name,
    Sha256Hex,
    TextDatetime,
    UnitFloat,
    Version,
)

#: Separates the tenant, the doer and the phase in a dataset name (no name holds it).
DATASET_SEPARATOR: Final = "/"
#: The tenant of what was curated before tenants were kept apart (migration 023).
DEFAULT_TENANT: Final = "default"


def tenant_of(dataset: str) -> str:
    """The tenant of a dataset name (``DEFAULT_TENANT`` for a pre-tenant ``doer/phase`` name)."""
    parts = dataset.split(DATASET_SEPARATOR)
    return parts[0] if len(parts) == 3 else DEFAULT_TENANT


class DatasetSummary(ContractModel):
    """One dataset's sample counts and rates (the view ``v_dataset_stats``)."""

    dataset: Identifier
    tenant_id: Name
    doer: Name
    checked: Count
    accepted: Count
    clean_rate: UnitFloat  # accepted / checked
    contamination_rate: UnitFloat  # (self-loops + exact + near duplicates) / checked
    rejected: dict[str, Count]  # reject reason (without its detail) → count
    first_sample_at: TextDatetime
    last_sample_at: TextDatetime


class GoldenDataset(ContractModel):
    """A dataset's accepted samples frozen under a name and version, with their manifest hash."""

    name: Identifier
    version: Version
    dataset: Identifier  # the dataset it was frozen from
    # Its one tenant ("_mixed" for one frozen before tenants were kept apart from
    # several tenants' samples: visible to no tenant, replayed for none).
    tenant_id: str
    frozen_at: TextDatetime
    frozen_by: Identifier
    manifest_hash: Sha256Hex  # learning.golden.manifest_hash of sample_id → content_hash
    sample_count: Count
