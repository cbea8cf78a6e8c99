"""Stored records of curation: a dataset's statistics and a golden dataset."""

from __future__ import annotations

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


class DatasetSummary(ContractModel):
    """One dataset's sample counts and rates (the view ``v_dataset_stats``)."""

    dataset: Identifier
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
    frozen_at: TextDatetime
    frozen_by: Identifier
    manifest_hash: Sha256Hex  # learning.golden.manifest_hash of sample_id → content_hash
    sample_count: Count
