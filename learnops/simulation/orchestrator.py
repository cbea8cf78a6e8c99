"""A simulated orchestrator: realistic learning bundles and realistic bad input, seeded.

The demo, the integration tests and the benchmarks draw from the same source,
so what the demo shows is what the tests check and the benchmarks measure.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import phonenumbers

from models import ids
from models.events import RunCompleted

DOERS = ("PRDWriter", "CodeReviewer", "TestWriter", "SchemaMigrator", "RAGAnswerer")
PHASES = ("plan", "draft", "review", "finalize")
GATES = ("spec_complete", "lint_clean", "tests_pass", "no_secrets", "schema_valid", "cites_sources")
MODELS = ("model-a-large", "model-b-medium", "model-c-small")
_WORDS = tuple(
    "the service shall expose an endpoint that returns the order history for a customer "
    "with pagination and a stable sort by creation time retries are idempotent and the "
    "schema migration adds an index on customer id before the backfill completes".split(" ")
)


#: The tenant of the simulated orchestrator's runs unless one is given.
SIMULATED_TENANT = "acme"


@dataclass
class Orchestrator:
    """Generates bundles for a few doers; ``quality`` per policy id shifts their loss."""

    seed: int = 7
    doers: tuple[str, ...] = DOERS
    tenant_id: str = SIMULATED_TENANT
    start: datetime = field(default_factory=lambda: datetime(2026, 11, 1, tzinfo=UTC))
    quality: dict[str, float] = field(default_factory=dict)
    # Run ids are "<run_prefix>-<n>"; give each scenario its own prefix when
    # several share a topic, since run ids are unique across the system.
    run_prefix: str = ""

    def __post_init__(self) -> None:
        self.run_prefix = self.run_prefix or f"run-{self.seed}"
        self._rng = np.random.default_rng(self.seed)
        self._run = 0
        # Human notes draw from their own generator, so asking for them never
        # changes what the default bundles draw (fixed-seed scenarios rely on it).
        self._notes = HumanNotes(np.random.default_rng([self.seed, 0x6E6F746573]))
        #: What each human note artifact is, by artifact id (see ``HumanNotes``).
        self.planted: dict[str, PlantedNote] = {}

    def policy_of(self, doer: str) -> tuple[str, int]:
        """The (policy_id, version) a doer runs under unless told otherwise."""
        return f"{doer.lower()}-policy", 1

    def bundle(
        self,
        doer: str | None = None,
        *,
        occurred_at: datetime | None = None,
        policy: tuple[str, int] | None = None,
        deployment_id: str | None = None,
        arm: str | None = None,
        shadow: bool = False,
        quality: float | None = None,
        phase: str | None = None,
        notes: NoteMix | None = None,
    ) -> RunCompleted:
        """One plausible bundle (about 1 KB as JSON).

        ``phase`` fixes the run's phase. With ``notes``, the bundle also carries
        a human-written note, often with PII in it, and sometimes a duplicate,
        a near duplicate or a pasted copy of one of our earlier documents
        (what it is goes into :attr:`planted`). Neither option changes what
        the default bundles draw.
        """
        rng = self._rng
        self._run += 1
        doer = doer or self.doers[int(rng.integers(len(self.doers)))]
        policy_id, version = policy or self.policy_of(doer)
        q = quality if quality is not None else self.quality.get(policy_id, 0.8)
        # Better policies (higher q) pass more gates, ground better, cost less.
        failed = [g for g in GATES[:4] if rng.random() > 0.55 + 0.45 * q]
        passed = [g for g in GATES[:4] if g not in failed]
        claims = int(rng.integers(5, 40))
        words = rng.choice(_WORDS, size=int(rng.integers(40, 70)))
        content = " ".join(words)
        when = occurred_at or self.start + timedelta(seconds=self._run * 17)
        run_id = f"{self.run_prefix}-{self._run:08d}"
        # Drawn in the order the bundle always drew them: phase, model, diff hash.
        drawn_phase = PHASES[int(rng.integers(len(PHASES)))]
        phase = phase or drawn_phase
        model = MODELS[int(rng.integers(len(MODELS)))]
        artifacts: list[dict[str, object]] = [
            {
                "artifact_id": f"a-{self._run}-1",
                "kind": "document",
                "content": content,
                "origin": "ai-generated",
                "policy_id": policy_id,
            },
            {
                "artifact_id": f"a-{self._run}-2",
                "kind": "diff",
                "content_hash": hashlib.sha256(rng.bytes(32)).hexdigest(),
                "origin": "hybrid",
            },
        ]
        if notes is not None:
            note_id = f"a-{self._run}-3"
            text, planted = self._notes.note(doer, phase, (run_id, note_id), notes)
            artifacts.append(
                {"artifact_id": note_id, "kind": "note", "content": text, "origin": "human"}
            )
            self.planted[note_id] = planted
            self._notes.ours(doer, (run_id, f"a-{self._run}-1"), content)
        return RunCompleted.model_validate(
            {
                # Unique per run across scenarios (the seed alone would repeat ids).
                "event_id": str(ids.simulated_bundle_event_id(run_id)),
                "occurred_at": when.isoformat(),
                "run_id": run_id,
                "doer": doer,
                "phase": phase,
                "policy_id": policy_id,
                "policy_version": version,
                "tenant_id": self.tenant_id,
                "deployment_id": deployment_id,
                "arm": arm,
                "shadow": shadow,
                "model": model,
                "artifacts": artifacts,
                "gates": {"passed": passed, "failed": failed},
                "qav": {
                    "grounding_score": float(np.clip(rng.normal(0.6 + 0.35 * q, 0.08), 0, 1)),
                    "contradictions": int(rng.binomial(claims, 0.25 * (1 - q))),
                    "claims": claims,
                    "rag_coverage": float(np.clip(rng.normal(0.5 + 0.45 * q, 0.1), 0, 1)),
                },
                "costs": {
                    "spent": float(max(0.0, rng.normal(1.0 - 0.3 * q, 0.25))),
                    "budget": 1.0,
                },
                "latency": {
                    "p95_ms": float(max(50.0, rng.normal(9000 - 4000 * q, 1500))),
                    "p50_ms": 40.0,
                    "timeouts": int(rng.random() < 0.05 * (1 - q)),
                },
                "security": {"criticals": int(rng.random() < 0.03 * (1 - q)), "highs": 0},
                "api_breakages": int(rng.random() < 0.05 * (1 - q)),
                "db_migration": "not_applicable"
                if doer != "SchemaMigrator"
                else ("failed" if rng.random() > 0.9 + 0.1 * q else "ok"),
                "metrics": {"tokens_in": float(rng.integers(500, 5000))},
            }
        )

    def bundles(self, n: int, **kwargs: object) -> Iterator[RunCompleted]:
        """``n`` bundles in time order."""
        for _ in range(n):
            yield self.bundle(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BadInput:
    """A malformed message, with the kind of fault it carries."""

    key: bytes
    value: bytes
    fault: str  # "json" | "schema" | "nan" | "address" | "key"


def bad_inputs(orchestrator: Orchestrator, n: int) -> list[BadInput]:
    """``n`` malformed messages cycling through the faults a real producer makes."""
    out: list[BadInput] = []
    for i in range(n):
        good = orchestrator.bundle()
        record = good.model_dump(mode="json")
        kind = i % 5
        if kind == 0:
            value = good.to_json()[: 40 + i % 50]  # truncated JSON
            out.append(BadInput(good.doer.encode(), value, "json"))
        elif kind == 1:
            record["qav"]["grounding_score"] = 1.4  # out of range
            out.append(BadInput(good.doer.encode(), orjson.dumps(record), "schema"))
        elif kind == 2:
            raw = orjson.dumps(record).replace(b'"budget":1.0', b'"budget":NaN')
            out.append(BadInput(good.doer.encode(), raw, "nan"))
        elif kind == 3:  # an id holding an address: stored and shown in clear, so refused
            record["run_id"] = f"{good.run_id}-for-jane.doe{i}@example.com"
            out.append(BadInput(good.doer.encode(), orjson.dumps(record), "address"))
        else:
            out.append(BadInput(b"SomeoneElse", good.to_json(), "key"))
    return out


# --------------------------------------------------------------------------------------
# Human notes: PII, duplicates, near duplicates and self-loops for the curator
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteMix:
    """How often a bundle's human note is each kind of trouble (the rest are fresh notes)."""

    pii: float = 0.8  # share of fresh notes with PII in them
    duplicate: float = 0.15  # an earlier fresh note of the doer and phase again, its PII changed
    near_duplicate: float = 0.1  # an earlier fresh note with one word changed
    self_loop: float = 0.1  # one of our earlier documents pasted in as human text


@dataclass(frozen=True)
class PlantedNote:
    """What a simulated note is, for tests to check the curator's verdict against.

    ``kind`` is ``fresh``, ``exact_duplicate`` (the same text as ``source``
    once redacted: only its PII differs), ``near_duplicate`` (``source`` with
    one word added) or ``self_loop`` (a copy of our document ``source``, half
    the time in upper case with doubled spaces). ``source`` is the
    (run id, artifact id) of the original; ``pii`` lists the (kind, value)
    pairs written into the note.
    """

    kind: str
    source: tuple[str, str] | None
    pii: tuple[tuple[str, str], ...]


_FIRST = ("ana", "ben", "chloe", "dev", "elena", "farid", "grace", "hiro", "ines", "jonas")
_LAST = ("alvarez", "brooks", "chen", "dubois", "eriksen", "fischer", "gupta", "haddad")
_DOMAINS = ("example.com", "example.org", "mail.example.net", "corp.example.io")
_AREA_CODES = ("212", "303", "415", "512", "617", "206", "312", "404")
_FILLERS = {
    "team": ("payments", "checkout", "search", "onboarding", "billing", "identity", "growth"),
    "thing": ("invoice", "contract", "rollout plan", "migration script", "runbook", "budget"),
    "day": ("monday", "tuesday", "wednesday", "thursday", "friday", "next week", "tomorrow"),
    "name": tuple(n.capitalize() for n in _FIRST),
    "system": ("the ledger", "the order service", "the warehouse feed", "the auth proxy"),
}
# Sentences of a hand-written note. A slot in braces is filled each time: a
# filler word, or a PII value of that kind. Fixed runs stay short, so two notes
# that share sentences still share few five-word shingles.
_SENTENCES = (
    "Hi {name}, quick note about the {thing} for the {team} team.",
    "Please send the signed {thing} to {EMAIL} before {day}.",
    "You can reach me on {PHONE} if {system} acts up again.",
    "The refund went to card {CARD}, which the customer confirmed on {day}.",
    "Wire the deposit to {IBAN} and keep the receipt for {name}.",
    "Her SSN {SSN} was pasted into the ticket by mistake, please scrub it.",
    "The failing requests all came from {IPV4} around lunch on {day}.",
    "I rotated the key, the old one was api_key={API_KEY} so revoke it.",
    "{name} thinks {system} drops events when the {team} queue backs up.",
    "We agreed to freeze the {thing} until {name} reviews it on {day}.",
    "Can someone from {team} own the follow-up on {system}?",
    "The customer asked twice why the {thing} was late, I said {day}.",
    "Numbers look fine but {system} still times out for {team} users.",
    "Let us not ship the {thing} before {name} signs off.",
    "Reminder that {team} on-call covers {system} over the weekend.",
    "I copied {name} so the {thing} does not fall between teams.",
    "Latency on {system} doubled after the {team} deploy on {day}.",
    "Rolling back felt safer than patching {system} in place.",
    "Nobody could find the {thing} in the shared drive, {name} has it.",
    "The audit wants the {thing} archived with the {team} records.",
    "Postmortem draft is up, comments from {team} welcome by {day}.",
    "Escalate to {name} if {system} is still red after the retry.",
    "Our estimate for the {thing} slipped because {system} was flaky.",
    "Thanks all, closing this once {name} confirms the {thing} landed.",
    "The vendor mailed {EMAIL} again, ignore it until {name} replies.",
    "Call {PHONE} for the data center, the badge desk knows us.",
    "Staging points at {IPV4} now, production stays where it was.",
    "Keep the {thing} short, {team} only reads the first page.",
    "The {team} dashboard hides errors from {system} by default.",
    "Double check the totals, {name} found a rounding issue on {day}.",
)
_EDIT_WORDS = ("quickly", "honestly", "again", "still", "really", "maybe", "clearly")


def _luhn_check_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # doubled: these become the odd positions once the check digit is added
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


class HumanNotes:
    """Hand-written-looking notes of each doer and phase, and the trouble planted among them."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        # Per doer and phase: each fresh note's id, text, sentences and filler words.
        self._fresh: dict[tuple[str, str], list[_Fresh]] = {}
        self._ours: dict[str, list[tuple[tuple[str, str], str]]] = {}

    def ours(self, doer: str, source: tuple[str, str], content: str) -> None:
        """Remember one of our documents (by run and artifact id), which a later note may paste."""
        self._ours.setdefault(doer, []).append((source, content))

    def note(
        self, doer: str, phase: str, source: tuple[str, str], mix: NoteMix
    ) -> tuple[str, PlantedNote]:
        """A note for the bundle ``source`` (run id, artifact id) of this doer and phase."""
        rng = self._rng
        fresh = self._fresh.setdefault((doer, phase), [])
        ours = self._ours.get(doer, [])
        roll = float(rng.random())
        if fresh and roll < mix.duplicate:
            original = fresh[int(rng.integers(len(fresh)))]
            values, pii = self._values(original.sentences, original.fillers, with_pii=True)
            text = _join(original.sentences, values)
            return text, PlantedNote("exact_duplicate", original.source, pii)
        roll -= mix.duplicate
        if fresh and roll < mix.near_duplicate:
            original = fresh[int(rng.integers(len(fresh)))]
            # One word more, at the start of a sentence (never inside a value).
            parts = list(original.parts)
            at = int(rng.integers(len(parts)))
            parts[at] = f"{_EDIT_WORDS[int(rng.integers(len(_EDIT_WORDS)))]} {parts[at]}"
            text = " ".join(parts)
            return text, PlantedNote("near_duplicate", original.source, original.pii)
        roll -= mix.near_duplicate
        if ours and roll < mix.self_loop:
            ours_source, content = ours[int(rng.integers(len(ours)))]
            if rng.random() < 0.5:
                content = content.upper().replace(" ", "  ")
            return content, PlantedNote("self_loop", ours_source, ())
        picks = rng.choice(len(_SENTENCES), size=int(rng.integers(8, 12)), replace=False)
        sentences = [_SENTENCES[int(i)] for i in picks]
        with_pii = bool(rng.random() < mix.pii)
        if not with_pii:
            sentences = [s for s in sentences if not any(f"{{{k}}}" in s for k in _PII_KINDS)]
        fillers = {
            name: options[int(rng.integers(len(options)))] for name, options in _FILLERS.items()
        }
        values, pii = self._values(sentences, fillers, with_pii=with_pii)
        parts = [sentence.format(**values) for sentence in sentences]
        fresh.append(_Fresh(source, parts, sentences, fillers, pii))
        return " ".join(parts), PlantedNote("fresh", None, pii)

    def _values(
        self, sentences: list[str], fillers: dict[str, str], *, with_pii: bool
    ) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
        values = dict(fillers)
        pii: list[tuple[str, str]] = []
        slots = sorted({f for s in sentences for _, f, _, _ in _FORMAT.parse(s) if f})
        for slot in slots:
            if slot in _PII_MAKERS and with_pii:
                values[slot] = _PII_MAKERS[slot](self._rng)
                pii.append((slot, values[slot]))
        return values, tuple(pii)


@dataclass(frozen=True)
class _Fresh:
    source: tuple[str, str]
    parts: list[str]  # the rendered sentences
    sentences: list[str]
    fillers: dict[str, str]
    pii: tuple[tuple[str, str], ...]


def _join(sentences: list[str], values: dict[str, str]) -> str:
    return " ".join(s.format(**values) for s in sentences)


_FORMAT = string.Formatter()


def _email(rng: np.random.Generator) -> str:
    first = _FIRST[int(rng.integers(len(_FIRST)))]
    last = _LAST[int(rng.integers(len(_LAST)))]
    return f"{first}.{last}{int(rng.integers(1, 99))}@{_DOMAINS[int(rng.integers(len(_DOMAINS)))]}"


def _phone(rng: np.random.Generator) -> str:
    while True:
        area = _AREA_CODES[int(rng.integers(len(_AREA_CODES)))]
        number = f"+1{area}{int(rng.integers(200, 999))}{int(rng.integers(0, 10000)):04d}"
        parsed = phonenumbers.parse(number)
        if phonenumbers.is_valid_number(parsed):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def _card(rng: np.random.Generator) -> str:
    body = "4" + "".join(str(int(d)) for d in rng.integers(0, 10, size=14))
    digits = body + _luhn_check_digit(body)
    return " ".join(digits[i : i + 4] for i in range(0, 16, 4))


def _iban(rng: np.random.Generator) -> str:
    bban = "".join(str(int(d)) for d in rng.integers(0, 10, size=18))  # German: 8 + 10 digits
    # ISO 13616 check digits: 98 - (BBAN + "DE00" as digits) mod 97.
    numeric = int(bban + "1314" + "00")
    digits = f"DE{98 - numeric % 97:02d}{bban}"
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def _ssn(rng: np.random.Generator) -> str:
    area = int(rng.integers(1, 666))
    return f"{area:03d}-{int(rng.integers(1, 100)):02d}-{int(rng.integers(1, 10000)):04d}"


def _ipv4(rng: np.random.Generator) -> str:
    return "10." + ".".join(str(int(o)) for o in rng.integers(1, 255, size=3))


def _api_key(rng: np.random.Generator) -> str:
    alphabet = string.ascii_letters + string.digits
    body = "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), size=36))
    return f"sk-{int(rng.integers(10, 99))}{body}"


_PII_MAKERS = {
    "EMAIL": _email,
    "PHONE": _phone,
    "CARD": _card,
    "IBAN": _iban,
    "SSN": _ssn,
    "IPV4": _ipv4,
    "API_KEY": _api_key,
}
_PII_KINDS = tuple(_PII_MAKERS)
