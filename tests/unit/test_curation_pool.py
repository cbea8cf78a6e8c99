"""The curator's processes (agents/curation_pool.py): the same text as the loop, and no orphans."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from agents import curation_pool
from agents.curation_pool import CHUNK, MIN_BUNDLES, START_BUNDLES, CurationPool, PreparedBatch
from learning.samples import bundle_text, prepare_bundles
from tests.unit.curation_corpus import ALERTING, corpus

ROOT = Path(__file__).resolve().parents[2]
HASHING = ALERTING.hashing
START_S = 60.0  # a spawned process imports numpy, datasketch and the redaction rules


async def ready(pool: CurationPool) -> None:
    """Start the pool with a batch and wait until its processes answered the first call."""
    texts = [bundle_text(b) for b in list(corpus())[:START_BUNDLES]]
    assert pool.prepare(texts) is None  # not up yet: this batch is prepared in the loop
    deadline = time.monotonic() + START_S
    while not pool.ready:
        assert time.monotonic() < deadline, f"the curation processes not up after {START_S} s"
        await asyncio.sleep(0.05)


def failed() -> float:
    return REGISTRY.get_sample_value("learnops_curation_pool_failures_total") or 0.0


async def test_the_processes_prepare_what_the_loop_would() -> None:
    pool = CurationPool(1, HASHING)
    try:
        texts = [bundle_text(b) for b in list(corpus())[: 2 * CHUNK + 5]]
        assert pool.prepare(texts[: MIN_BUNDLES - 1]) is None  # too few to use them
        assert pool.prepare(texts[: START_BUNDLES - 1]) is None  # too few to start them
        assert pool.pids == []
        await ready(pool)
        batch = pool.prepare(texts)
        assert batch is not None and len(batch) == 4  # 4, 16, 16, 1
        prepared = [await batch.get(n) for n in range(len(texts))]
        assert prepared == prepare_bundles(texts, HASHING)
        assert [p.artifacts[0].signature for p in prepared] != [b""] * len(prepared)
    finally:
        pool.close()


async def test_a_killed_process_is_counted_and_the_processes_start_again_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(curation_pool, "RETRY_S", 1.0)
    pool = CurationPool(1, HASHING)
    try:
        await ready(pool)
        texts = [bundle_text(b) for b in list(corpus())[: 3 * CHUNK]]
        (child,) = pool.pids
        os.kill(child, signal.SIGKILL)
        failures = failed()
        batch = pool.prepare(texts)
        if batch is not None:  # the kill was not yet seen at the submit: the calls fail
            with pytest.raises(BrokenProcessPool):
                await batch.get(0)
            pool.failed()
        assert failed() == failures + 1
        assert not pool.ready
        # For RETRY_S batches are prepared in the loop and nothing is started...
        assert pool.prepare(texts) is None and pool.pids == []
        await asyncio.sleep(1.0)
        await ready(pool)  # ...then a batch starts the processes afresh
        batch = pool.prepare(texts)
        assert batch is not None
        assert [await batch.get(n) for n in range(len(texts))] == prepare_bundles(texts, HASHING)
    finally:
        pool.close()


def test_a_stop_signalled_to_the_workers_process_group_leaves_its_processes_working() -> None:
    # Ctrl-C or `kill -TERM -PGID` signal every process of the worker's group; the
    # worker drains its batch while it stops (here: it ignores the signal), so its
    # processes must not die with the signal.
    script = (
        "import asyncio, signal, sys, time\n"
        "from agents.curation_pool import CHUNK, CurationPool\n"
        "from learning.samples import bundle_text, prepare_bundles\n"
        "from tests.unit.test_curation_pool import HASHING, corpus, ready\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "pool = CurationPool(1, HASHING)\n"
        "asyncio.run(ready(pool))\n"
        "print(*pool.pids, flush=True)\n"
        "sys.stdin.readline()\n"
        "async def again():\n"
        "    texts = [bundle_text(b) for b in list(corpus())[: 2 * CHUNK]]\n"
        "    batch = pool.prepare(texts)\n"
        "    got = [await batch.get(n) for n in range(len(texts))]\n"
        "    return got == prepare_bundles(texts, HASHING)\n"
        "print(asyncio.run(again()), *pool.pids, flush=True)\n"
        "pool.close()\n"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, as a worker under a supervisor
    )
    try:
        assert worker.stdout is not None and worker.stdin is not None
        (child,) = map(int, worker.stdout.readline().split())
        assert os.getpgid(child) != worker.pid
        for sig in (signal.SIGTERM, signal.SIGINT):
            os.killpg(worker.pid, sig)
        time.sleep(0.5)  # a default handler would have ended it by now
        worker.stdin.write("go\n")
        worker.stdin.flush()
        same, *pids = worker.stdout.readline().split()
        assert same == "True" and list(map(int, pids)) == [child]
        assert worker.wait(timeout=START_S) == 0
    finally:
        if worker.poll() is None:
            worker.kill()


async def test_when_one_of_two_processes_dies_the_other_is_ended_too() -> None:
    # The executor ends the survivors with SIGTERM and waits for them: a survivor that
    # ignored it would hang the executor and, at exit, the worker.
    pool = CurationPool(2, HASHING)
    try:
        await ready(pool)
        texts = [bundle_text(b) for b in list(corpus())[: 4 * CHUNK]]
        warm = pool.prepare(texts)  # both processes take chunks
        assert warm is not None
        [await warm.get(n) for n in range(len(texts))]
        children = pool.pids
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        batch = pool.prepare(texts)
        if batch is not None:
            with pytest.raises(BrokenProcessPool):
                await batch.get(0)
        pool.failed()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children):
            assert time.monotonic() < deadline, f"processes left: {children}"
            await asyncio.sleep(0.1)
    finally:
        pool.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


async def test_a_failed_batch_leaves_no_unread_error_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A process that dies fails every chunk in flight and the first error read ends
    # the batch. The others must not be logged as never retrieved when collected,
    # whether or not the reader cancels the batch (the curator does; a stage
    # cancelled while it waits does not).
    loop = asyncio.get_running_loop()
    chunks = [(start, loop.create_future()) for start in (0, MIN_BUNDLES, MIN_BUNDLES + CHUNK)]
    batch = PreparedBatch(chunks)
    for _, chunk in chunks:
        chunk.set_exception(BrokenProcessPool("a process died"))
    with pytest.raises(BrokenProcessPool):
        await batch.get(0)
    del batch, chunks, chunk
    await asyncio.sleep(0)  # the chunks' done callbacks run
    gc.collect()
    assert "never retrieved" not in caplog.text


def test_a_process_ends_with_the_worker_that_started_it() -> None:
    # A worker killed with SIGKILL cannot shut its pool down; each process sees its
    # parent gone and ends by itself.
    script = (
        "import asyncio, os, sys, time\n"
        "from agents.curation_pool import CurationPool\n"
        "from tests.unit.test_curation_pool import HASHING, ready\n"
        "pool = CurationPool(1, HASHING)\n"
        "asyncio.run(ready(pool))\n"
        "print(*pool.pids, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert Path(f"/proc/{child}").exists()
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "the curation process outlived its worker by 10 s"
            time.sleep(0.1)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; its new parent reaps it


async def test_processes_that_cannot_start_leave_the_work_to_the_loop_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A first call that fails (here: a module the processes cannot import) does not mend
    # itself; the pool stops trying instead of spawning a failing process every batch.
    monkeypatch.setattr(curation_pool, "WARM_UP", ("t", "d", "r", "p", None, Unpicklable()))
    pool = CurationPool(1, HASHING)
    texts = [bundle_text(b) for b in list(corpus())[:START_BUNDLES]]
    failures = failed()
    try:
        assert pool.prepare(texts) is None
        deadline = time.monotonic() + START_S
        while pool.processes:
            assert time.monotonic() < deadline, "the failed start not seen"
            await asyncio.sleep(0.05)
            assert pool.prepare(texts) is None
        assert failed() == failures + 1
        assert pool.prepare(texts) is None and pool.pids == []
    finally:
        pool.close()


class Unpicklable(tuple):
    """A value that cannot cross to a curation process."""

    def __reduce__(self) -> str:
        raise TypeError("this value cannot be pickled")
