"""Every deterministic id the service derives (UUIDv5), and the namespaces they live in.

An id derived from what it identifies (the event that caused it, the run, the
sample) is the same whoever computes it and however often: a redelivered or
replayed input yields the same id, and writes keyed by it stay idempotent.
The namespaces are fixed: changing one, or the name a function builds, re-keys
every id issued before (tests/unit/test_ids.py pins them).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Final
from uuid import UUID

#: PolicyChange and Alert events caused by another event (a command, a decision).
POLICY_EVENT_NAMESPACE: Final = UUID("5b0c1f4e-8a53-4f43-9d5e-3f1c1b2a7c10")
#: Events the experiment store derives from its durable rows.
EXPERIMENT_EVENT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:learnops:experiments")
#: Canary decisions of a deployment.
CANARY_DECISION_NAMESPACE: Final = UUID("0c5e7d62-3f1a-4c1e-9a77-52a4c1d0e8b1")
#: Replay tasks and the bundles that report them.
REPLAY_TASK_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:learnops:replay-task")
#: Replays (a policy, a golden dataset, a seed set).
REPLAY_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:learnops:replay")
#: Curated samples, their events and the contamination alerts of datasets.
CURATION_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "learnops:curation")
#: Alerts the CRL stage raises (one regression alert per key and day).
CRL_ALERT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:learnops:crl-alert")
#: Records of dead letters that could not be read themselves (the dead-letter stage).
DEAD_LETTER_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:learnops:dead-letter")
#: Experiments the bandit files when one option of a tunable parameter is best.
BANDIT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:learnops:bandit")
#: The bundles of the simulated orchestrator (the demo and the tests).
SIMULATION_NAMESPACE: Final = uuid.NAMESPACE_URL

# The largest integer a JSON number (an IEEE-754 double) holds exactly.
_MAX_SAFE_INTEGER = 2**53 - 1
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# RFC 8785 §3.2.2.2: the short escapes, other control characters as lower-case \u00xx.
_STRING_ESCAPES: dict[int, str] = {code: f"\\u{code:04x}" for code in range(0x20)}
_STRING_ESCAPES.update(
    {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r", 0x22: '\\"', 0x5C: "\\\\"}
)


def caused_event_id(kind: str, cause: UUID) -> UUID:
    """Return the id of the ``kind`` event (``policy-change``, ``alert``) that ``cause`` led to."""
    return uuid.uuid5(POLICY_EVENT_NAMESPACE, f"{kind}:{cause}")


def key_revoked_alert_id(key_id: str, revoked_at: datetime, doer: str) -> UUID:
    """The id of the alert that a signing key's revocation raises for one doer's live versions."""
    return uuid.uuid5(
        POLICY_EVENT_NAMESPACE, f"key-revoked:{key_id}:{revoked_at.isoformat()}:{doer}"
    )


def regression_alert_id(raised_by: str, key: str, day: str) -> UUID:
    """Return the id of the CRL regression alert a service (its app id) raises for a key and day.

    ``key`` is a doer, doer/phase or doer/policy@version. Two learnops services
    (app ids) watching the same doer raise two alerts: each its own id.
    """
    return uuid.uuid5(CRL_ALERT_NAMESPACE, f"crl_regression:{raised_by}:{key}:{day}")


def experiment_event_id(*parts: object) -> UUID:
    """Return the id of an experiment-store event from the parts that identify what it reports."""
    return uuid.uuid5(EXPERIMENT_EVENT_NAMESPACE, "/".join(str(p) for p in parts))


def canary_decision_id(
    deployment_id: str, action: str, step: int, results: int, resumes: int = 0
) -> UUID:
    """Return the id of a canary decision: a deployment's action at a step after ``results``.

    After an operator's resume (``resumes``), a second pause at the same step and
    result count (a silence, which counts no result) is another decision.
    """
    name = f"{deployment_id}:{action}:{step}:{results}"
    return uuid.uuid5(CANARY_DECISION_NAMESPACE, f"{name}:r{resumes}" if resumes else name)


def unreadable_letter_id(topic: str, partition: int, offset: int) -> UUID:
    """Return the record id of the unreadable message at ``topic``/``partition``/``offset``."""
    return uuid.uuid5(DEAD_LETTER_NAMESPACE, f"{topic}/{partition}/{offset}")


def deployment_id(event_id: UUID, mode: str) -> str:
    """Return the id of the shadow or canary deployment the event ``event_id`` starts."""
    return f"{mode}-{event_id.hex[:16]}"


def replay_task_id(replay_id: str, sample_id: str, seed: int) -> str:
    """Return the id of one task of a replay (the replay, its sample and seed).

    The replay id names the policy, the manifest and the seed *set*, so two
    replays whose seed sets overlap have tasks of their own (a task of one is
    never taken for the other's). The name is the RFC 8785 JSON array of the
    parts, which names them unambiguously whatever characters they hold. Raises
    ValueError for a text with a lone surrogate or a seed no JSON number holds
    exactly.
    """
    name = _json_array(["replay-task", replay_id, sample_id, seed])
    return str(uuid.uuid5(REPLAY_TASK_NAMESPACE, name))


def replay_id(policy_hash: str, manifest_hash: str, seeds: Iterable[int]) -> str:
    """Return the id of a replay; the seeds count as a set (order and repeats ignored)."""
    name = _json_array(["replay", policy_hash, manifest_hash, sorted(set(seeds))])
    return str(uuid.uuid5(REPLAY_NAMESPACE, name))


def replay_bundle_event_id(run_id: str) -> UUID:
    """Return the event id of the bundle that reports a replay task's run."""
    return uuid.uuid5(REPLAY_TASK_NAMESPACE, f"bundle/{run_id}")


def simulated_bundle_event_id(run_id: str) -> UUID:
    """Return the event id of a simulated orchestrator's bundle for ``run_id``."""
    return uuid.uuid5(SIMULATION_NAMESPACE, f"learnops:{run_id}")


def crl_event_id(bundle_event_id: UUID, weights_version: str) -> UUID:
    """Return the id of the CRLComputed of a bundle scored with one version of the weights."""
    return uuid.uuid5(bundle_event_id, f"learning.crl-computed/{weights_version}")


def sample_id(tenant: str, doer: str, run_id: str, artifact_id: str) -> str:
    """Return a sample's id: the same for the same artifact of the same run of one tenant.

    The tenant is part of it: two tenants may use the same run and artifact
    ids, and neither may see (or be answered with) the other's verdict.
    """
    name = f"sample\x00{tenant}\x00{doer}\x00{run_id}\x00{artifact_id}"
    return str(uuid.uuid5(CURATION_NAMESPACE, name))


def sample_event_id(sample: str) -> UUID:
    """Return the event id of a sample's SampleCurated."""
    return uuid.uuid5(CURATION_NAMESPACE, f"sample-curated\x00{sample}")


def contamination_alert_id(dataset: str, day: str) -> UUID:
    """Return the id of a dataset's contamination alert of one day (at most one a day)."""
    return uuid.uuid5(CURATION_NAMESPACE, f"contamination\x00{dataset}\x00{day}")


def tuning_experiment_id(
    doer: str, policy_id: str, version: int, phase: str, parameter: str, option: str
) -> str:
    """Return the id of the experiment that fixes ``option`` of a policy version's parameter."""
    name = _json_array(["tuning-experiment", doer, policy_id, version, phase, parameter, option])
    return str(uuid.uuid5(BANDIT_NAMESPACE, name))


def _json_array(parts: list[object]) -> str:
    """Return the RFC 8785 text of an array of strings, integers and arrays of integers."""
    return "[" + ",".join(_json_value(part) for part in parts) + "]"


def _json_value(value: object) -> str:
    if isinstance(value, str):
        surrogate = _LONE_SURROGATE.search(value)
        if surrogate is not None:
            raise ValueError(
                f"{value!r} holds a lone surrogate U+{ord(surrogate.group()):04X}; "
                "an id's name must be valid Unicode"
            )
        return '"' + value.translate(_STRING_ESCAPES) + '"'
    if isinstance(value, int) and not isinstance(value, bool):
        if not -_MAX_SAFE_INTEGER <= value <= _MAX_SAFE_INTEGER:
            raise ValueError(f"{value} is beyond what a JSON number holds exactly (2**53 - 1)")
        return int.__repr__(value)
    if isinstance(value, list):
        return _json_array(value)
    raise TypeError(f"an id's name holds strings and integers, not {type(value).__name__}")
