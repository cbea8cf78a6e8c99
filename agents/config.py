"""The learning configuration (config/learning.yaml): CRL weights, trends, curation, bandits.

Apart from :mod:`agents.settings` because reading it imports ``learning.*``
(numpy, scipy, datasketch), which the CLI and the settings must not pay for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path

from agents.settings import SettingsError, packaged
from agents.yaml12 import YAMLFileError, load_yaml
from learning.bandit_book import BookConfig
from learning.crl import CRLConfigError, LatencyObjectives, WeightBook
from learning.promotion import CanaryLimits
from learning.replay import ReplayConfig
from learning.samples import CurationConfig
from learning.skills import SkillConfig
from learning.trends import TrendConfig


@dataclass(frozen=True)
class LearningConfig:
    """What the learning pipeline is tuned with: CRL weights, objectives, trends and curation."""

    weights: WeightBook
    objectives: LatencyObjectives
    trends: TrendConfig
    curation: CurationConfig = field(default_factory=CurationConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    skills: SkillConfig = field(default_factory=SkillConfig)
    bandit: BookConfig = field(default_factory=BookConfig)
    canary_limits: CanaryLimits = field(default_factory=CanaryLimits)


def load_learning_config(source: Path | Traversable | None = None) -> LearningConfig:
    """Read the file LEARNOPS_CONFIG_FILE names, or (``None``) the packaged learning.yaml."""
    source = packaged("learning.yaml") if source is None else source
    try:
        raw = load_yaml(source.read_text(encoding="utf-8"), source) or {}
    except FileNotFoundError:
        raise SettingsError(f"LEARNOPS_CONFIG_FILE: {source} does not exist") from None
    except YAMLFileError as exc:
        raise SettingsError(f"LEARNOPS_CONFIG_FILE: {exc}") from None
    crl = raw.get("crl") or {}
    try:
        return LearningConfig(
            weights=WeightBook.from_dict(crl.get("weights") or {}),
            objectives=LatencyObjectives.from_dict(crl.get("latency_objectives") or {}),
            trends=TrendConfig(**(raw.get("trends") or {})),
            curation=CurationConfig.from_dict(raw.get("curation") or {}),
            replay=ReplayConfig.from_dict(raw.get("replay") or {}),
            skills=SkillConfig.from_dict(raw.get("skills") or {}),
            bandit=BookConfig.from_dict(raw.get("bandit") or {}),
            canary_limits=_canary_limits(raw.get("canary") or {}),
        )
    except (CRLConfigError, TypeError, ValueError) as exc:
        raise SettingsError(f"LEARNOPS_CONFIG_FILE: {source}: {exc}") from None


def _canary_limits(raw: dict[str, object]) -> CanaryLimits:
    """The ``canary`` section: only ``limits`` for now (learning.promotion.CanaryLimits)."""
    unknown = sorted(set(raw) - {"limits"})
    if unknown:
        raise ValueError(f"canary: unknown settings {', '.join(unknown)}")
    limits = raw.get("limits") or {}
    if not isinstance(limits, dict):
        raise ValueError("canary.limits must be a mapping")
    return CanaryLimits.from_dict(limits)
