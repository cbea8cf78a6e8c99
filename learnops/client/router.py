"""The orchestrator's routing client: follows learning.policy-changes, routes tasks locally.

An orchestrator keeps one :class:`Router`. It reads the compacted
``learning.policy-changes`` topic from the beginning (every doer's latest
state) and keeps following it in the background, so ``route(doer, task_id)``
is a dictionary look-up and a hash (``learning.routing.route``), with no
network call per task. The orchestrator then runs the task under the route's
policy and publishes a ``TaskRouted`` on ``learning.task-routed``
(``learnops.simulation.canary`` shows how).

    async with Router("kafka:9092", trusted_keys=signers, worker_keys=workers) as router:
        found = router.route("PRDWriter", task_id)  # plus aiokafka options above

With ``trusted_keys`` (the public keys the orchestrator pins: the learnops
workers' keys and the policy signers' keys), a record is served only when its
Kafka key is its doer, the policy stage's signature verifies, its sequence
number is not below the doer's last, and the live version's (and the
candidate's) own signature verifies; anything else is refused with a reason,
counted in ``refused`` and logged, and the doer keeps its last good state
(docs/security.md, "Signed policy changes"). With ``worker_keys`` as well (the
workers' keys alone), the change itself must be signed by one of those: a
policy signer's key then signs versions, never changes.

    async with Router("kafka:9092", trusted_keys=signers, worker_keys=workers) as router: ...

It needs only the event contract (``models``), the routing rules
(``learning.routing``) and aiokafka: an orchestrator embeds it without the
service's Faust, database or numerical dependencies. aiokafka and the
contract are imported when the Router starts and reads its first record.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from learning.routing import Route, route
from learnops.client.follower import TopicFollower

if TYPE_CHECKING:
    from learning.signing import PublicKey, TrustedKeys
    from models.policy_change import PolicyChange

log = logging.getLogger("learnops.router")

CHANGES = "learning.policy-changes"


class UnknownDoer(LookupError):
    """The doer has no active policy on learning.policy-changes (yet)."""


class Router(TopicFollower):
    """Routes tasks from the latest PolicyChange of each doer, kept up to date in the background."""

    topic = CHANGES

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        trusted_keys: TrustedKeys | Iterable[PublicKey] | None = None,
        worker_keys: TrustedKeys | Iterable[PublicKey] | None = None,
        allow_unverified: bool = False,
        **client_options: Any,
    ) -> None:
        """Follow the cluster at ``bootstrap_servers`` (``host:port,…``).

        ``trusted_keys`` pins the keys whose signatures the Router accepts, and
        is required: a Router without them would serve whatever anyone who can
        write the topic sends. ``worker_keys``, when given, are the only keys a
        change itself may be signed by (the versions' own signatures are still
        checked against ``trusted_keys``); without them any pinned key may sign
        a change, a policy signer's too, and the Router says so at start.
        Only ``allow_unverified=True`` (a test bench, a
        local experiment) serves every valid record unverified, with a warning
        at start. ``client_options`` go to aiokafka's consumer as they are: its
        security (``security_protocol``, ``ssl_context``, ``sasl_mechanism``,
        ``sasl_plain_username``, ``sasl_plain_password``) or any other option.
        """
        if trusted_keys is None and not allow_unverified:
            raise ValueError(
                "Router needs trusted_keys: the public keys of the learnops workers and the "
                "policy signers it accepts (learnops operator keys / worker key); pass "
                "allow_unverified=True only where unsigned changes may be served "
                "(docs/security.md, Signed policy changes)"
            )
        if worker_keys is not None and trusted_keys is None:
            raise ValueError("worker_keys go with trusted_keys: the versions' signers")
        super().__init__(bootstrap_servers, **client_options)
        self._keys = pinned_keyring(trusted_keys)
        self._worker_keys = pinned_keyring(worker_keys)
        self._sequences: dict[str, int] = {}
        self.refused: Counter[str] = Counter()  # refused records by reason kind
        self._live: dict[str, PolicyChange] = {}
        self._changed = asyncio.Event()
        self.skipped = 0  # records that were not a valid PolicyChange

    async def start(self) -> None:
        """Read every doer's latest state, then keep following the topic."""
        if self._keys is None:
            log.warning("router_unpinned policy changes are served without verification")
        elif self._worker_keys is None:
            log.warning(
                "router_change_keys_shared any pinned key may sign a policy change, a policy "
                "signer's too; pin the workers' keys as worker_keys (docs/security.md)"
            )
        await super().start()

    def apply(self, value: bytes, key: bytes | None = None) -> PolicyChange | None:
        """Take one record of the topic (its value and Kafka key); the change served, or None.

        A record that is not a PolicyChange is counted in ``skipped``; with
        pinned keys, one that does not verify is counted in ``refused`` and
        the doer keeps its last good state.
        """
        # Imported at the first record, not with the client: the contract is
        # pydantic models (~0.2 s to import), and importing the client is kept
        # to what an orchestrator pays up front (bench/startup.py).
        from pydantic import ValidationError

        from models.policy_change import PolicyChange

        try:
            change = PolicyChange.from_json(value)
        except ValidationError as exc:
            self.skipped += 1
            log.warning("router_skipped_record error_count=%d", exc.error_count())
            return None
        if self._keys is not None:
            refusal = check_change(
                change,
                key,
                self._keys,
                self._sequences.get(change.doer),
                worker_keys=self._worker_keys,
            )
            if refusal is not None:
                kind, reason = refusal
                self.refused[kind] += 1
                log.warning(
                    "router_refused doer=%s refusal=%s reason=%r", change.doer, kind, reason
                )
                return None
            if change.sequence is not None:
                self._sequences[change.doer] = change.sequence
        self._live[change.doer] = change
        self._changed.set()
        return change

    def live(self, doer: str) -> PolicyChange | None:
        """The doer's latest known state."""
        return self._live.get(doer)

    def route(self, doer: str, task_id: str) -> Route:
        """The route of a task: which policy serves it, its arm, whether to mirror it."""
        change = self._live.get(doer)
        if change is None:
            raise UnknownDoer(f"{doer} has no active policy on {CHANGES} yet")
        return route(change, task_id)

    async def wait_for(
        self, doer: str, predicate: Callable[[PolicyChange], bool], timeout: float = 60.0
    ) -> PolicyChange:
        """The doer's state once ``predicate`` holds for it; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while True:
                change = self._live.get(doer)
                if change is not None and predicate(change):
                    return change
                self._changed.clear()
                await self._changed.wait()


def check_change(
    change: PolicyChange,
    key: bytes | None,
    keys: TrustedKeys,
    last_sequence: int | None,
    *,
    worker_keys: TrustedKeys | None = None,
) -> tuple[str, str] | None:
    """Why a record may not be served, as (kind, reason); None when it verifies.

    Kinds: ``key`` (the record's Kafka key is not its doer), ``signature``
    (the policy stage's signature, by one of ``worker_keys`` when given, else
    by any of ``keys``), ``sequence`` (missing, or below the
    doer's last), ``policy`` (the live version's or the candidate's own
    signature, by :func:`learning.signing.policy_payload`).
    """
    from learning.signing import POLICY_CHANGE_KIND, policy_payload, verify_event

    if key is None or key != change.doer.encode():
        return "key", f"record key {key!r} is not the doer {change.doer!r}"
    signed = verify_event(
        POLICY_CHANGE_KIND,
        change.model_dump(mode="json"),
        keys if worker_keys is None else worker_keys,
    )
    if not signed:
        return "signature", f"the change's signature is refused: {signed.reason}"
    if change.sequence is None:
        return "sequence", "the change has no sequence number"
    if last_sequence is not None and change.sequence < last_sequence:
        return "sequence", (
            f"sequence {change.sequence} is below {last_sequence}, the last one taken"
        )
    versions: list[tuple[str, int, str | None, str | None]] = [
        (change.policy_id, change.version, change.content_hash, change.policy_signature)
    ]
    live = change.deployment
    if live is not None:
        versions.append(
            (
                live.candidate_policy_id,
                live.candidate_version,
                live.candidate_content_hash,
                live.candidate_signature,
            )
        )
    for policy_id, version, content_hash, signature in versions:
        ref = f"{policy_id}@{version}"
        if content_hash is None or signature is None:
            return "policy", f"{ref} carries no format 2 signature to check"
        payload = policy_payload(
            doer=change.doer, policy_id=policy_id, version=version, content_hash=content_hash
        )
        check = keys.verify(payload, signature)
        if not check:
            return "policy", f"{ref} does not verify: {check.reason}"
    return None


def pinned_keyring(keys: TrustedKeys | Iterable[PublicKey] | None) -> TrustedKeys | None:
    """The keyring of the public keys a client pins, or None when it pins none."""
    if keys is None:
        return None
    from learning.signing import TrustedKeys

    if isinstance(keys, TrustedKeys):
        return keys
    ring = TrustedKeys()
    for public_key in keys:
        ring.add(public_key)
    return ring
