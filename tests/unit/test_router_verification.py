"""The Router serves a policy change only when it verifies against its pinned keys."""

from __future__ import annotations

from typing import Any

import pytest

from learning.signing import (
    POLICY_CHANGE_KIND,
    SigningKey,
    content_digest,
    generate_key,
    policy_payload,
    sign,
    sign_event,
)
from learnops.client.router import Router
from models.policy_change import DeploymentRouting, PolicyChange

WORKER = generate_key()
SIGNER = generate_key()
DOER = "PRDWriter"


def policy_signature(key: SigningKey, policy_id: str, version: int, digest: str) -> str:
    payload = policy_payload(doer=DOER, policy_id=policy_id, version=version, content_hash=digest)
    return str(sign(payload, key))


def change(
    sequence: int,
    *,
    version: int = 1,
    worker: SigningKey = WORKER,
    signer: SigningKey = SIGNER,
    **update: Any,
) -> PolicyChange:
    digest = content_digest({"prompt": f"revision {version}"})
    unsigned = PolicyChange(
        doer=DOER,
        change="promoted",
        status="active",
        policy_id="prdwriter",
        version=version,
        content_hash=digest,
        signature_key_id=signer.key_id,
        policy_signature=policy_signature(signer, "prdwriter", version, digest),
        sequence=sequence,
    ).model_copy(update=update)
    signature = sign_event(POLICY_CHANGE_KIND, unsigned.model_dump(mode="json"), worker)
    return unsigned.model_copy(update={"signature": signature})


def pinned() -> Router:
    return Router("127.0.0.1:9", trusted_keys=[WORKER.public_key, SIGNER.public_key])


def test_a_signed_change_in_sequence_is_served() -> None:
    router = pinned()
    assert router.apply(change(1).to_json(), DOER.encode()) is not None
    served = router.apply(change(2, version=2).to_json(), DOER.encode())
    assert served is not None and router.route(DOER, "task-1").version == 2
    assert not router.refused


def test_a_change_under_another_records_key_is_refused_and_the_last_good_one_kept() -> None:
    router = pinned()
    router.apply(change(1).to_json(), DOER.encode())
    assert router.apply(change(2, version=2).to_json(), b"Reviewer") is None
    assert router.refused == {"key": 1}
    # A record with no key at all is refused too (Allocations refuses it as well).
    assert router.apply(change(3, version=2).to_json(), None) is None
    assert router.refused == {"key": 2}
    assert router.route(DOER, "task-1").version == 1


def test_a_sequence_going_backwards_is_refused() -> None:
    router = pinned()
    router.apply(change(5, version=2).to_json(), DOER.encode())
    # An older record replanted (or kept by compaction) must not win at a restart.
    assert router.apply(change(4, version=1).to_json(), DOER.encode()) is None
    assert router.refused == {"sequence": 1}
    assert router.route(DOER, "task-1").version == 2
    unnumbered = change(6, version=1).model_copy(update={"sequence": None})
    resigned = unnumbered.model_copy(
        update={
            "signature": sign_event(POLICY_CHANGE_KIND, unnumbered.model_dump(mode="json"), WORKER)
        }
    )
    assert router.apply(resigned.to_json(), DOER.encode()) is None
    assert router.refused == {"sequence": 2}


def test_a_change_signed_by_an_unpinned_key_or_altered_is_refused() -> None:
    router = pinned()
    router.apply(change(1).to_json(), DOER.encode())
    forged = change(2, version=2, worker=generate_key())
    assert router.apply(forged.to_json(), DOER.encode()) is None
    altered = change(3).model_copy(update={"version": 3})
    assert router.apply(altered.to_json(), DOER.encode()) is None
    assert router.refused == {"signature": 2}
    assert router.route(DOER, "task-1").version == 1


def test_a_version_whose_own_signature_fails_is_not_served() -> None:
    router = pinned()
    router.apply(change(1).to_json(), DOER.encode())
    unpinned_signer = change(2, version=2, signer=generate_key())
    assert router.apply(unpinned_signer.to_json(), DOER.encode()) is None
    unsigned_version = change(3, version=2, policy_signature=None)
    assert router.apply(unsigned_version.to_json(), DOER.encode()) is None
    assert router.refused == {"policy": 2}
    digest = content_digest({"prompt": "candidate"})
    bad_candidate = change(
        4,
        status="canary",
        deployment=DeploymentRouting(
            deployment_id="canary-1",
            salt="s",
            candidate_policy_id="prdwriter",
            candidate_version=7,
            allocation=0.1,
            candidate_content_hash=digest,
            # signed for version 6: it does not verify for version 7
            candidate_signature=policy_signature(SIGNER, "prdwriter", 6, digest),
        ),
    )
    assert router.apply(bad_candidate.to_json(), DOER.encode()) is None
    assert router.refused == {"policy": 3}
    assert router.route(DOER, "task-1").version == 1


def test_with_worker_keys_pinned_a_policy_signers_key_cannot_sign_a_change() -> None:
    """Found by a red-team trial: with one ring for both, a policy signer's key signed a
    change making a rolled-back version active, numbered far ahead of the doer's."""
    shared = pinned()
    separate = Router(
        "127.0.0.1:9", trusted_keys=[SIGNER.public_key], worker_keys=[WORKER.public_key]
    )
    for router in (shared, separate):
        assert router.apply(change(1).to_json(), DOER.encode()) is not None
    forged = change(2**31 - 1, version=2, worker=SIGNER)
    assert shared.apply(forged.to_json(), DOER.encode()) is not None  # what the trial did
    assert separate.apply(forged.to_json(), DOER.encode()) is None
    assert separate.refused == {"signature": 1}
    # The workers' own changes still go through, and versions still need a signer's key.
    assert separate.apply(change(2, version=2).to_json(), DOER.encode()) is not None
    by_worker = change(3, version=3, signer=WORKER)
    assert separate.apply(by_worker.to_json(), DOER.encode()) is None
    assert separate.refused == {"signature": 1, "policy": 1}
    with pytest.raises(ValueError, match="worker_keys go with trusted_keys"):
        Router("127.0.0.1:9", worker_keys=[WORKER.public_key], allow_unverified=True)


def test_a_router_without_pinned_keys_is_refused_unless_unverified_is_asked_for() -> None:
    with pytest.raises(ValueError, match="Router needs trusted_keys"):
        Router("127.0.0.1:9")


def test_with_unverified_allowed_the_router_serves_what_it_reads() -> None:
    router = Router("127.0.0.1:9", allow_unverified=True)
    assert router.apply(change(1, worker=generate_key()).to_json(), b"anything") is not None
