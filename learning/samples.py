"""From a run bundle to curated samples: dataset names, sample ids, labels, one doer's guard state.

The curator stage (``agents/curator.py``) is this module plus Kafka.  For each
live bundle, every artifact with content becomes a sample of the dataset
``"{tenant}/{doer}/{phase}"``:

1. redact it (``learning.curation.redact``, repeated until a last scan finds
   nothing, so no PII reaches a topic or PostgreSQL),
2. check it against the dataset's contamination guard (self-loop, exact and
   near duplicate, diversity), sharing the doer's memory of our own outputs
   across the datasets of one tenant (never across tenants: a verdict names
   the sample it matched, and one tenant must not learn another's ids),
3. label it from the bundle's QAV results and gates,
4. give back the :class:`~models.events.SampleCurated` event, the verdict
   record the stage keeps in a Faust table, and a contamination alert when
   the dataset's contamination rate passes the rule (at most one per dataset
   and UTC day).

Replay and shadow bundles give no samples: a replay re-runs a sample we have
already curated, and a shadow run was never served.  Their artifacts that our
policies generated are remembered for the self-loop check all the same.

:meth:`DoerCuration.restore` rebuilds the state from the stored records
(after a restart or a rebalance), so the guard's verdicts do not depend on
when the worker last started.  Pure logic: no I/O.
"""

from __future__ import annotations

import base64
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final

from learning.contamination import (
    ContaminationAlertRule,
    ContaminationGuard,
    DatasetStats,
    GoldenSet,
    GuardConfig,
    GuardVerdict,
    MinHasher,
    SelfLoopGuard,
)
from learning.curation import (
    content_hash,
    findings_only,
    label_sample,
    replace_findings,
    specificity,
)
from models.base import name_problem, sha256_hex
from models.datasets import DATASET_SEPARATOR, DEFAULT_TENANT, tenant_of
from models.events import Alert, Artifact, CurationLabels, RunCompleted, SampleCurated
from models.ids import contamination_alert_id, sample_event_id, sample_id

#: Redaction is repeated until a scan of the result finds nothing, at most this often.
REDACTION_ROUNDS: Final = 3


class CurationError(ValueError):
    """A bundle cannot be curated; ``reason`` says why in words a person can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------
# Names and ids
# --------------------------------------------------------------------------------------


def dataset_name(tenant: str, doer: str, phase: str) -> str:
    """The rolling dataset a sample of this tenant, doer and phase belongs to.

    ``"{tenant}/{doer}/{phase}"``: one dataset per tenant, doer and phase. What
    a doer learns from differs by phase (a plan is not a review); one tenant's
    text never joins another's; and keying the state by doer keeps a
    dataset's guard in the one worker that owns the doer's partition. All
    three are names (``models.base.NAME_RULE``: no ``/``), so a dataset name
    splits one way only; ValueError names the broken rule otherwise.
    """
    for what, name in (("tenant", tenant), ("doer", doer), ("phase", phase)):
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(f"the {what} of a dataset name {problem}")
    return DATASET_SEPARATOR.join((tenant, doer, phase))


def is_live(bundle: RunCompleted) -> bool:
    """Whether the bundle is a served run (no replay, no shadow run): only those give samples."""
    return bundle.replay_id is None and not bundle.shadow


def with_content(bundle: RunCompleted) -> list[Artifact]:
    """The bundle's artifacts that carry text: each becomes a sample of a live bundle."""
    return [a for a in bundle.artifacts if a.content and a.content.strip()]


def is_ours(artifact: Artifact) -> bool:
    """Whether one of our policies generated the artifact (the bundle names the policy)."""
    return artifact.policy_id is not None


# --------------------------------------------------------------------------------------
# Redaction and labels
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedactedText:
    """Text with every finding replaced, and the number of findings per kind."""

    text: str
    counts: dict[str, int]


def visible_form(text: str) -> str:
    """``text`` in NFKC with its invisible format characters (Unicode category Cf) removed.

    A zero-width space or a soft hyphen inside ``jane.doe@example.com``, or a
    fullwidth ``＠``, hid the address from the detectors, and inside words
    split them for the duplicate guard, so a near-copy read as new text. What
    is scanned, stored and compared is this form (ASCII text is unchanged).
    """
    if text.isascii():
        return text
    folded = unicodedata.normalize("NFKC", text)
    return "".join(c for c in folded if unicodedata.category(c) != "Cf")


def redact_fully(text: str) -> RedactedText:
    """``text`` redacted until a last scan finds nothing; ``CurationError`` if it never does.

    The text is taken in its :func:`visible_form` first. One round is enough on
    everything measured (``redact`` is idempotent on the corpus), so the second
    round is the last scan before anything is stored.
    """
    text = visible_form(text)
    found = findings_only(text)
    if not found:
        return RedactedText(text, {})  # most texts and names
    counts: Counter[str] = Counter()
    for _ in range(REDACTION_ROUNDS):
        if not found:
            return RedactedText(text, dict(counts))
        result = replace_findings(text, found)  # each text is scanned once
        counts.update(result.counts)
        text = result.text
        found = findings_only(text)
    if found:
        raise CurationError(f"PII is still found after {REDACTION_ROUNDS} rounds of redaction")
    return RedactedText(text, dict(counts))


def labels_for(
    bundle: RunCompleted,
    artifact: Artifact,
    text: str,
    *,
    matches_our_output: bool,
    specificity_of_text: float | None = None,
) -> CurationLabels:
    """The labels of one artifact of a bundle (rules in docs/curation.md, "Labels").

    ``text`` is the redacted content (specificity never counts placeholders).
    Without QAV results grounding and contradiction are unknown (``None``),
    not 0.
    """
    qav = bundle.qav
    labels = label_sample(
        text=text,
        grounding_score=qav.grounding_score if qav else None,
        contradiction_count=qav.contradictions if qav else 0,
        claim_count=qav.claims if qav else 0,
        gates_passed=len(bundle.gates.passed),
        gates_failed=len(bundle.gates.failed),
        artifact_origin=artifact.origin,
        produced_by_our_policy=is_ours(artifact),
        matches_our_output=matches_our_output,
        specificity_of_text=specificity_of_text,
    )
    values = dict(vars(labels))  # flat values: no need for asdict's deep copy
    if qav is None:
        values["contradiction"] = None
    return CurationLabels.model_validate(values)


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurationConfig:
    """The contamination guard's thresholds and the contamination alert rule."""

    guard: GuardConfig = field(default_factory=GuardConfig)
    alert: ContaminationAlertRule = field(default_factory=ContaminationAlertRule)

    @property
    def hashing(self) -> Hashing:
        """The guards' MinHash settings: what a prepared bundle's signatures are made with."""
        return (self.guard.num_perm, self.guard.shingle_size, self.guard.seed)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CurationConfig:
        """From config/learning.yaml's ``curation`` section; unknown keys are errors."""
        values = dict(raw)
        alert = dict(values.pop("alert", None) or {})
        guard_keys = set(GuardConfig.__dataclass_fields__)
        unknown = sorted(set(values) - guard_keys)
        if unknown:
            raise ValueError(f"curation: unknown settings {', '.join(unknown)}")
        alert_keys = {"max_contamination_rate": "max_rate", "min_samples": "min_count"}
        unknown = sorted(set(alert) - set(alert_keys))
        if unknown:
            raise ValueError(f"curation.alert: unknown settings {', '.join(unknown)}")
        return cls(
            guard=GuardConfig(**values),
            alert=ContaminationAlertRule(**{alert_keys[k]: v for k, v in alert.items()}),
        )


# --------------------------------------------------------------------------------------
# One doer's curation state
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CuratedSample:
    """One sample of a bundle: its event, the verdict record to keep, and an alert if one fired.

    ``record`` is ``None`` when the sample was curated before (a redelivered
    bundle): the event and any alert are the same as the first time.
    """

    event: SampleCurated
    record: dict[str, Any] | None
    alert: Alert | None


@dataclass(frozen=True)
class Curation:
    """What curating one bundle gave: samples, and artifacts of ours to remember by sample id."""

    samples: list[CuratedSample]
    own_outputs: dict[str, dict[str, Any]]
    skipped: str | None = None  # "replay" or "shadow": the bundle gives no samples


# --------------------------------------------------------------------------------------
# What a bundle's text gives without any state: prepared beside the event loop
# --------------------------------------------------------------------------------------

#: A live bundle's text as :func:`prepare_bundle` takes it (plain values, cheap to
#: send to another process): tenant, doer, run id, phase, model, and for each
#: artifact with content (``(artifact_id, kind, content)``) in the bundle's order.
BundleText = tuple[str, str, str, str, str | None, tuple[tuple[str, str, str], ...]]

#: The MinHash settings a signature was computed with: num_perm, shingle_size, seed.
Hashing = tuple[int, int, int]


@dataclass(frozen=True)
class PreparedArtifact:
    """One artifact's redacted text, hashes, cleaned names and MinHash signature."""

    sample_id: str
    text: str
    digest: str
    redactions: dict[str, int]  # of the content and of the names below
    raw_hash: str
    # The orchestrator's ids and names, scanned too, so a careless id
    # ("notes-jane@example.com") cannot carry PII past the curator.
    artifact_id: str
    kind: str
    signature: bytes  # MinHasher.to_bytes of the text's signature
    specificity: float  # learning.curation.specificity of the text, a label


@dataclass(frozen=True)
class _Draft:
    """One artifact of a live bundle about to be checked: the artifact and its prepared text."""

    artifact: Artifact
    prepared: PreparedArtifact
    run_id: str  # the bundle's, redacted
    phase: str

    @property
    def sample_id(self) -> str:
        return self.prepared.sample_id


@dataclass(frozen=True)
class PreparedBundle:
    """What curating a live bundle computes from its text alone: the same whoever computes it.

    The curator stage has it computed in its curation processes
    (``agents/curation_pool.py``) while the event loop does other work, and
    :meth:`DoerCuration.curate` takes it instead of computing it again;
    ``error`` is the :class:`CurationError` reason preparing raised (PII that
    redaction did not clear), raised again by ``curate``.
    """

    hashing: Hashing
    run_id: str
    phase: str
    model: str | None
    artifacts: tuple[PreparedArtifact, ...]
    error: str | None = None


def bundle_text(bundle: RunCompleted) -> BundleText:
    """The part of a bundle :func:`prepare_bundle` reads."""
    return (
        bundle.tenant_id,
        bundle.doer,
        bundle.run_id,
        bundle.phase,
        bundle.model,
        tuple((a.artifact_id, a.kind, a.content or "") for a in with_content(bundle)),
    )


_HASHERS: dict[Hashing, MinHasher] = {}


def _hasher(hashing: Hashing) -> MinHasher:
    found = _HASHERS.get(hashing)
    if found is None:
        num_perm, shingle_size, seed = hashing
        found = _HASHERS[hashing] = MinHasher(num_perm, shingle_size, seed)
    return found


def prepare_bundle(text: BundleText, hashing: Hashing) -> PreparedBundle:
    """Redact, hash, name and sign a live bundle's artifacts (pure: no state, no I/O)."""
    tenant, doer, run, bundle_phase, model, artifacts = text
    try:
        (run_id, phase), bundle_counts = _clean_names(run, bundle_phase)
        hasher = _hasher(hashing)
        prepared = []
        for artifact_id, kind, content in artifacts:
            redacted = redact_fully(content)
            (clean_id, clean_kind), counts = _clean_names(artifact_id, kind)
            counts.update(bundle_counts)
            counts.update(redacted.counts)
            prepared.append(
                PreparedArtifact(
                    sample_id=sample_id(tenant, doer, run, artifact_id),
                    text=redacted.text,
                    digest=content_hash(redacted.text),
                    redactions=dict(counts),
                    raw_hash=sha256_hex(content),
                    artifact_id=clean_id,
                    kind=clean_kind,
                    signature=hasher.to_bytes(hasher.signature(redacted.text)),
                    specificity=specificity(redacted.text),
                )
            )
        # Only a sample carries the model (DoerCuration._event).
        clean_model = None if model is None or not artifacts else redact_fully(model).text
    except CurationError as exc:
        return PreparedBundle(hashing, "", "", None, (), error=exc.reason)
    return PreparedBundle(hashing, run_id, phase, clean_model, tuple(prepared))


def prepare_bundles(texts: list[BundleText], hashing: Hashing) -> list[PreparedBundle]:
    """:func:`prepare_bundle` of each (what a curation process is sent: one call per chunk)."""
    return [prepare_bundle(text, hashing) for text in texts]


def _clean_names(*values: str) -> tuple[list[str], Counter[str]]:
    counts: Counter[str] = Counter()
    cleaned = []
    for value in values:
        result = redact_fully(value)
        counts.update(result.counts)
        cleaned.append(result.text)
    return cleaned, counts


def _b64(signature: bytes) -> str:
    return base64.b64encode(signature).decode("ascii")


def _reused(prior: Mapping[str, Any], prepared: Any) -> bool:
    """Whether a stored verdict is of other content under the same sample id (a reused
    artifact id), not of this content redelivered.

    Compared by the raw content's hash where the record has it: the redacted text's hash
    changes with the redaction rules, and an upgrade that redacts more (2026-12-08) made
    every redelivered bundle curated before it look reused. A record from before the raw
    hash was kept cannot tell the two apart and is taken for a redelivery.
    """
    if prior["hash"] == prepared.digest:
        return False
    raw = prior.get("raw")
    return raw is not None and raw != prepared.raw_hash


class DoerCuration:
    """The curation state of one doer: a guard per dataset, one memory of our outputs per tenant.

    Records (plain JSON-able dicts) say everything the state holds: a verdict
    record per checked sample, and an own-output record per artifact of ours
    that was not a sample.  :meth:`restore` rebuilds the state from them, so a
    doer's state can live in a changelog-backed table and move between
    workers.
    """

    def __init__(
        self, doer: str, config: CurationConfig | None = None, *, curator: str | None = None
    ) -> None:
        self.doer = doer
        self.config = config or CurationConfig()
        self.curator = curator
        self.self_loops: dict[str, SelfLoopGuard] = {}  # per tenant
        self.guards: dict[str, ContaminationGuard] = {}
        self._alerted: set[tuple[str, str]] = set()  # (dataset, UTC day) that alerted
        # Every record the state holds: ("sample" | "own", sample id) -> the UTC day
        # it was curated (None for a record written before records had days).
        self.kept: dict[tuple[str, str], str | None] = {}
        self._last_seq: dict[str, int] = {}  # per dataset, the seq of its latest verdict

    def self_loop(self, tenant: str) -> SelfLoopGuard:
        """The tenant's memory of our outputs for this doer (created empty on first use)."""
        found = self.self_loops.get(tenant)
        if found is None:
            g = self.config.guard
            found = self.self_loops[tenant] = SelfLoopGuard(
                threshold=g.self_loop_threshold,
                num_perm=g.num_perm,
                shingle_size=g.shingle_size,
                seed=g.seed,
            )
        return found

    def guard(self, dataset: str) -> ContaminationGuard:
        """The dataset's guard (created empty on first use), with its tenant's self-loop memory."""
        found = self.guards.get(dataset)
        if found is None:
            found = self.guards[dataset] = ContaminationGuard(
                self.config.guard, self_loop=self.self_loop(tenant_of(dataset))
            )
        return found

    def stats(self) -> dict[str, DatasetStats]:
        """Verdict counts per dataset of this doer."""
        return {name: guard.stats for name, guard in sorted(self.guards.items())}

    # -- curating -------------------------------------------------------------------

    def curate(
        self,
        bundle: RunCompleted,
        *,
        now: datetime,
        previous: Callable[[str], Mapping[str, Any] | None] = lambda _: None,
        prepared: PreparedBundle | None = None,
        golden: GoldenSet | None = None,
    ) -> Curation:
        """The samples of one bundle, in artifact order; ``previous`` finds a stored verdict.

        ``prepared`` is :func:`prepare_bundle` of the bundle when the caller
        has it already (computed in another process); without it, or for other
        MinHash settings, it is computed here. ``golden`` holds the bundle's
        tenant's golden samples, which a sample may not copy (``golden_copy``).

        A sample whose verdict is already stored (a redelivery) gets that
        verdict again and no new record.  A stored verdict for other content
        under the same run and artifact id is a producer error:
        :class:`CurationError`, before anything changes.
        """
        if bundle.doer != self.doer:
            raise ValueError(f"bundle of {bundle.doer!r} given to the curation of {self.doer!r}")
        live = is_live(bundle)
        drafts: list[_Draft] = []
        model: str | None = None
        if live:
            if prepared is None or prepared.hashing != self.hashing:
                prepared = prepare_bundle(bundle_text(bundle), self.hashing)
            drafts, model = self._drafts(bundle, prepared)
        priors = {d.sample_id: previous(d.sample_id) for d in drafts}
        if len(priors) != len(drafts):
            raise CurationError("two artifacts of the bundle share one artifact id")
        for draft in drafts:
            prior = priors[draft.sample_id]
            if prior is not None and _reused(prior, draft.prepared):
                raise CurationError(
                    f"artifact {draft.sample_id} (sample id) of this run was curated before "
                    "with other content; artifact ids must not be reused"
                )
        # Nothing has changed so far; from here on the state moves.
        own = self._own_outputs(bundle, now.date().isoformat())
        if not live:
            return Curation([], own, "replay" if bundle.replay_id is not None else "shadow")
        samples = []
        for draft in drafts:
            prior = priors[draft.sample_id]
            if prior is not None:
                samples.append(self._again(bundle, draft, model, prior, now))
            else:
                samples.append(self._check(bundle, draft, model, now, golden))
        return Curation(samples, own)

    def _own_outputs(self, bundle: RunCompleted, day: str) -> dict[str, dict[str, Any]]:
        # Artifacts of ours that are not offered as samples: all of them in a
        # replay or shadow bundle, and those known by hash only in a live one.
        live = is_live(bundle)
        records: dict[str, dict[str, Any]] = {}
        for artifact in bundle.artifacts:
            if not is_ours(artifact) or (live and artifact.content):
                continue
            # Remembered under the id it would have as a sample: ids from the
            # bundle may hold anything, a uuid5 of them holds nothing.
            key = sample_id(bundle.tenant_id, bundle.doer, bundle.run_id, artifact.artifact_id)
            hasher = self.self_loop(bundle.tenant_id).hasher
            record: dict[str, Any]
            if artifact.content:
                text = redact_fully(artifact.content).text
                signature = hasher.to_bytes(hasher.signature(text))
                record = {
                    "raw": sha256_hex(artifact.content),
                    "hash": content_hash(text),
                    "sig": _b64(signature),
                }
            else:
                assert artifact.content_hash is not None  # the model requires one or the other
                record = {"raw": artifact.content_hash, "hash": None, "sig": None}
            record["day"] = day
            record["tenant"] = bundle.tenant_id
            self._remember_own(key, record)
            records[key] = record
        return records

    def _remember_own(self, key: str, record: Mapping[str, Any]) -> None:
        self.kept[("own", key)] = record.get("day")
        self_loop = self.self_loop(str(record.get("tenant") or DEFAULT_TENANT))
        if record.get("sig"):
            self_loop.record_signature(key, record["hash"], base64.b64decode(record["sig"]))
        self_loop.record_hash(key, record["raw"])

    @property
    def hashing(self) -> Hashing:
        """The MinHash settings of this doer's guards (what a prepared bundle must match)."""
        return self.config.hashing

    @staticmethod
    def _drafts(bundle: RunCompleted, prepared: PreparedBundle) -> tuple[list[_Draft], str | None]:
        if prepared.error is not None:
            raise CurationError(prepared.error)
        artifacts = with_content(bundle)
        if len(artifacts) != len(prepared.artifacts):
            raise ValueError(
                f"prepared for {len(prepared.artifacts)} artifacts, the bundle has "
                f"{len(artifacts)} with content"
            )
        drafts = [
            _Draft(artifact, p, prepared.run_id, prepared.phase)
            for artifact, p in zip(artifacts, prepared.artifacts, strict=True)
        ]
        return drafts, prepared.model

    def _check(
        self,
        bundle: RunCompleted,
        draft: _Draft,
        model: str | None,
        now: datetime,
        golden: GoldenSet | None = None,
    ) -> CuratedSample:
        try:
            dataset = dataset_name(bundle.tenant_id, bundle.doer, draft.phase)
        except ValueError as exc:
            # A phase that reads as PII (an IP address, a card number) is redacted to a
            # placeholder that is no name: the bundle's problem, not the stage's, so a
            # dead letter with the reason, never an internal error that counts toward
            # halting the stage.
            raise CurationError(f"no dataset for the sample's phase: {exc}") from exc
        guard = self.guard(dataset)
        ours = is_ours(draft.artifact)
        verdict = guard.check(
            draft.sample_id,
            draft.prepared.text,
            ai_generated_by_us=ours,
            also_hashes=() if ours else (draft.prepared.raw_hash,),
            signature=draft.prepared.signature,
            golden=golden,
        )
        alert = self._maybe_alert(bundle, draft.phase, dataset, guard.stats)
        record: dict[str, Any] = {
            "sample_id": draft.sample_id,
            "dataset": dataset,
            "seq": self._next_seq(dataset),
            "day": now.date().isoformat(),
            "hash": verdict.content_hash,
            # The artifact's own bytes' hash: what tells a reused artifact id from a
            # redelivery once the redaction rules (and so "hash") have changed.
            "raw": draft.prepared.raw_hash,
            "accepted": verdict.accepted,
            "reason": verdict.reason,
            "diversity": verdict.diversity,
            "near": verdict.near_duplicates,
            "self_loop_of": verdict.self_loop_of,
            "ours": ours,
            # Only what a restore needs: accepted samples enter the index and
            # window, ours the self-loop memory; others' rejects need no signature.
            "sig": _b64(draft.prepared.signature) if verdict.accepted or ours else None,
            "alert": alert.model_dump(mode="json") if alert else None,
        }
        self.kept[("sample", draft.sample_id)] = record["day"]
        event = self._event(bundle, draft, model, dataset, verdict, now)
        return CuratedSample(event, record, alert)

    def _next_seq(self, dataset: str) -> int:
        seq = self._last_seq[dataset] = self._last_seq.get(dataset, 0) + 1
        return seq

    def _again(
        self,
        bundle: RunCompleted,
        draft: _Draft,
        model: str | None,
        prior: Mapping[str, Any],
        now: datetime,
    ) -> CuratedSample:
        verdict = _verdict_of(prior)
        alert = Alert.model_validate(prior["alert"]) if prior.get("alert") else None
        event = self._event(bundle, draft, model, str(prior["dataset"]), verdict, now)
        return CuratedSample(event, None, alert)

    def _maybe_alert(
        self, bundle: RunCompleted, phase: str, dataset: str, stats: DatasetStats
    ) -> Alert | None:
        day = bundle.occurred_at.date().isoformat()
        if (dataset, day) in self._alerted:
            return None
        message = self.config.alert.evaluate(stats)
        if message is None:
            return None
        self._alerted.add((dataset, day))
        return contamination_alert(
            bundle.doer, phase, dataset, day, message, stats, self.config.alert
        )

    def _event(
        self,
        bundle: RunCompleted,
        draft: _Draft,
        model: str | None,
        dataset: str,
        verdict: GuardVerdict,
        now: datetime,
    ) -> SampleCurated:
        artifact = draft.artifact
        matches_ours = verdict.self_loop_of is not None and not is_ours(artifact)
        labels = labels_for(
            bundle,
            artifact,
            draft.prepared.text,
            matches_our_output=matches_ours,
            specificity_of_text=draft.prepared.specificity,
        )
        return SampleCurated(
            event_id=sample_event_id(draft.sample_id),
            occurred_at=now,
            doer=bundle.doer,
            sample_id=draft.sample_id,
            run_id=draft.run_id,
            phase=draft.phase,
            policy_id=bundle.policy_id,
            policy_version=bundle.policy_version,
            artifact_id=draft.prepared.artifact_id,
            kind=draft.prepared.kind,
            origin=labels.origin,  # as reported, except that ours is never "human"
            accepted=verdict.accepted,
            reject_reason=verdict.reason,
            content=draft.prepared.text,
            content_hash=verdict.content_hash,
            redactions=draft.prepared.redactions,
            labels=labels,
            near_duplicate_of=verdict.near_duplicates,
            self_loop_of=verdict.self_loop_of,
            diversity=min(1.0, max(0.0, verdict.diversity)),
            dataset=dataset,
            tenant_id=bundle.tenant_id,
            source_event_id=bundle.event_id,
            run_occurred_at=bundle.occurred_at,
            # The model is free text from the orchestrator, stored with the sample:
            # redacted like the names (a key or an address pasted into it stays out).
            model=model,
            curator=self.curator,
        )

    # -- expiring -------------------------------------------------------------------

    def expiring(self, today: date) -> list[tuple[str, str]]:
        """The records (kind, sample id) curated more than ``memory_days`` before ``today``."""
        horizon = (today - timedelta(days=self.config.guard.memory_days)).isoformat()
        return sorted(k for k, day in self.kept.items() if day is not None and day < horizon)

    def undated(self) -> list[tuple[str, str]]:
        """The records written before records had a day (they are dated when next pruned)."""
        return sorted(k for k, day in self.kept.items() if day is None)

    # -- restoring ------------------------------------------------------------------

    def restore(
        self,
        samples: Iterable[Mapping[str, Any]],
        own_outputs: Iterable[tuple[str, Mapping[str, Any]]] = (),
    ) -> None:
        """Rebuild the state from verdict records and own-output records (key, record).

        Verdicts are put back per dataset in the order they were reached
        (``seq``); own outputs in any order.  Checking the same bundles
        afterwards gives what it would have given without the restart.
        """
        for key, record in own_outputs:
            self._remember_own(key, record)
        by_dataset: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for record in samples:
            by_dataset[str(record["dataset"])].append(record)
        for dataset, records in by_dataset.items():
            guard = self.guard(dataset)
            for record in sorted(records, key=lambda r: int(r["seq"])):
                self._last_seq[dataset] = int(record["seq"])
                self.kept[("sample", str(record["sample_id"]))] = record.get("day")
                sig = record.get("sig")
                guard.restore(
                    str(record["sample_id"]),
                    _verdict_of(record),
                    base64.b64decode(sig) if sig else None,
                    ai_generated_by_us=bool(record["ours"]),
                )
                alert = record.get("alert")
                if alert:
                    self._alerted.add((dataset, str(alert["evidence"]["day"])))


def _verdict_of(record: Mapping[str, Any]) -> GuardVerdict:
    return GuardVerdict(
        accepted=bool(record["accepted"]),
        reason=record["reason"],
        diversity=float(record["diversity"]),
        near_duplicates=list(record["near"]),
        content_hash=str(record["hash"]),
        self_loop_of=record["self_loop_of"],
    )


def contamination_alert(
    doer: str,
    phase: str,
    dataset: str,
    day: str,
    message: str,
    stats: DatasetStats,
    rule: ContaminationAlertRule,
) -> Alert:
    """The alert for a dataset whose contamination rate passed the rule on ``day``."""
    return Alert(
        event_id=contamination_alert_id(dataset, day),
        doer=doer,
        kind="contamination",
        severity="warning",
        message=f"dataset {dataset}: {message}",
        value=stats.contamination_rate,
        threshold=rule.max_rate,
        phase=phase,
        evidence={
            "dataset": dataset,
            "day": day,
            "checked": stats.checked,
            "accepted": stats.accepted,
            "clean_rate": stats.clean_rate,
            "rejected": dict(stats.rejected),
            "min_samples": rule.min_count,
        },
    )
