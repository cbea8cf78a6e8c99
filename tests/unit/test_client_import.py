"""The orchestrator-side client imports the contract and the routing rules, nothing else of ours."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.services import REPO

# Run in a fresh interpreter: this test process has imported everything already.
PROBE = """
import json, sys, time
started = time.perf_counter()
from learnops.client import Router, UnknownDoer
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "modules": sorted(sys.modules)}))
"""

#: What the client may never pull in: the service's layers and its heavy dependencies.
FORBIDDEN = ("agents", "storage", "learnops.cli", "learnops.demo", "faust", "scipy", "asyncpg")
#: Our top-level packages, and the only modules of ours the Router may load (models.* too).
OURS = ("agents", "storage", "learning", "learnops", "models")
ALLOWED = (
    "learnops",
    "learnops.client",
    "learnops.client.allocations",
    "learnops.client.follower",
    "learnops.client.router",
    "learning",
    "learning.routing",
)


def _imported() -> tuple[float, list[str]]:
    found = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True
    )
    result = json.loads(found.stdout)
    return result["seconds"], result["modules"]


def _under(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == root or module.startswith(f"{root}.") for root in roots)


def test_the_router_imports_only_the_contract_and_the_routing_rules() -> None:
    seconds, modules = _imported()
    # Printed, not asserted: timings on a shared machine are not a test (bench/ is for that).
    print(f"from learnops.client import Router: {seconds:.3f} s in a fresh interpreter")
    assert [m for m in modules if _under(m, FORBIDDEN)] == []
    ours = [m for m in modules if _under(m, OURS)]
    strays = [m for m in ours if m not in ALLOWED and not _under(m, ("models",))]
    assert strays == []
    assert "learning.routing" in modules
    # The contract (pydantic models) is imported when the Router reads its first record.
    assert [m for m in modules if _under(m, ("pydantic", "models"))] == []


def test_the_router_reads_a_record_with_the_contract_imported_on_first_use() -> None:
    from learnops.client import Router

    router = Router("127.0.0.1:9", allow_unverified=True)
    assert router.apply(b'{"not": "a policy change"}') is None
    assert router.skipped == 1


def test_the_replay_executor_is_loaded_on_first_use_only() -> None:
    import learnops.client

    assert callable(learnops.client.serve)
    assert learnops.client.serve.__module__ == "learnops.client.replay_executor"
