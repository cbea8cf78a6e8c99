"""The curator's text work in processes of its own, beside the worker's event loop.

What curating a bundle computes from its text alone — redaction, the content
and raw hashes, sample ids, cleaned names and the MinHash signature
(:func:`learning.samples.prepare_bundle`) — is about half the curator's CPU
and needs no state. A worker runs every stage on one event loop in one
CPython process, so that work held every other stage's turn and used one
core of a machine that has more. The curator stage hands it to
``LEARNOPS_CURATION_PROCESSES`` processes (default 1; 0 computes it in the
loop as before) and keeps in the loop only what needs the doer's state: the
guards, the verdicts, the table writes and the sends.

* The processes start at the first batch of :data:`START_BUNDLES` live
  bundles or more, when the curator has fallen that far behind: a worker that
  keeps up never starts them (each costs about a second of CPU to start and
  100–150 MB). Until they answer a first call, batches are prepared in the
  loop; if that call fails (the worker's main module cannot be imported
  again, say), they are not started again and the loop does the work.
* Batches of :data:`MIN_BUNDLES` or more go to the processes once they are
  up; smaller ones are prepared in the loop.
* A batch is sent in chunks, all at once: a first one of :data:`MIN_BUNDLES`
  bundles, then :data:`CHUNK` each. The stage curates each bundle as soon as
  its chunk is back, so the processes prepare the next chunks while the loop
  curates the first, and the loop waits only for the short first chunk.
* The results are the same whoever computes them (the same function; the
  seeded corpus's digest is checked both ways,
  tests/unit/test_curation_equivalence.py), so the stage's exactly-once
  argument does not change: a batch is acked after its last bundle is
  curated, and a redelivered bundle gets its stored verdicts again.
* A process that dies (killed, out of memory) breaks the pool: the batch in
  hand is prepared in the loop, the pool is shut down and started again at a
  batch :data:`RETRY_S` later or more, and
  ``learnops_curation_pool_failures_total`` counts it.
* Each process runs in a process group of its own, ignores SIGINT (the
  worker decides when to stop: a stop signalled to its process group must not
  break the batch it drains) and ends by itself when its parent is gone, so a
  worker killed with SIGKILL leaves no process behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Final

from prometheus_client import Counter

from learning.samples import BundleText, Hashing, PreparedBundle, prepare_bundles

log = logging.getLogger("learnops.curator")


class PreparedBatch:
    """A batch's prepared bundles, by their place among the batch's live bundles."""

    def __init__(self, chunks: list[tuple[int, asyncio.Future[list[PreparedBundle]]]]) -> None:
        self._chunks = chunks  # (index of the chunk's first bundle, its future), in order
        for _, chunk in chunks:
            chunk.add_done_callback(_retrieved)

    def __len__(self) -> int:
        return len(self._chunks)

    async def get(self, n: int) -> PreparedBundle:
        """The n-th bundle's prepared text, once its chunk is back (its error if it failed)."""
        for start, chunk in reversed(self._chunks):
            if start <= n:
                return (await chunk)[n - start]
        raise IndexError(n)

    def cancel(self) -> None:
        """Cancel the chunks not yet prepared."""
        for _, chunk in self._chunks:
            chunk.cancel()


def _retrieved(chunk: asyncio.Future[list[PreparedBundle]]) -> None:
    """Mark a chunk's error as seen: the stage reads the first one and gives up the rest.

    When a process dies every chunk in flight fails, and only the first read
    reaches :meth:`CurationPool.failed`. Unread, each of the others would log
    "Future exception was never retrieved" with its traceback when collected,
    and on CPython 3.11.7 that traceback's formatting, run by the garbage
    collector inside another ``ast.parse``, breaks it (gh-106905: "AST
    constructor recursion depth mismatch").
    """
    if not chunk.cancelled():
        chunk.exception()


#: A batch with fewer live bundles than this is prepared in the loop.
MIN_BUNDLES: Final = 4
#: The first batch this large (the curator has fallen behind) starts the processes.
START_BUNDLES: Final = 32
#: Bundles sent to a curation process in one call.
CHUNK: Final = 16
#: How often a curation process checks that the worker that started it is still there.
PARENT_CHECK_S: Final = 1.0
#: After the processes failed, how long batches are prepared in the loop before they start again.
RETRY_S: Final = 30.0

PREPARED = Counter(
    "learnops_curation_prepared_total",
    "Live bundles whose text the curator prepared, by where (pool: a curation process).",
    ["where"],
)
POOL_FAILURES = Counter(
    "learnops_curation_pool_failures_total",
    "Times the curation processes failed and a batch was prepared in the event loop instead.",
)


def _child_start(parent: int) -> None:
    """In each curation process: out of the worker's process group, ending with the worker.

    A stop signalled to the worker's process group (a shell's Ctrl-C, `kill
    -TERM -PGID`) would otherwise end these processes at once and break the
    batch the worker drains while it stops. In a group of their own they get
    only the signals sent to them: the executor's own SIGTERM still ends the
    others when one dies (it waits for them; ignoring SIGTERM would hang it).
    """
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)  # the worker is gone (SIGKILL leaves its pool behind otherwise)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


#: What the first call prepares: the processes import, compile and build their hasher.
WARM_UP: Final[BundleText] = ("tenant", "doer", "run", "phase", None, (("a", "note", "warm up"),))


class CurationPool:
    """Curation processes for one curator stage; :meth:`prepare` sends a batch's text to them."""

    def __init__(self, processes: int, hashing: Hashing) -> None:
        if processes < 0:
            raise ValueError(f"processes must be 0 or more, not {processes}")
        self.processes = processes
        self.hashing = hashing
        self._executor: ProcessPoolExecutor | None = None
        self._warm: Future[list[PreparedBundle]] | None = None  # answered: they are up
        self._retry_at = 0.0  # time.monotonic() before which they are not started again

    @property
    def ready(self) -> bool:
        """Whether the processes are up and answered their first call."""
        warm = self._warm
        return warm is not None and warm.done() and warm.exception() is None

    @property
    def pids(self) -> list[int]:
        """The processes' ids (none before they start or after they stop)."""
        executor = self._executor
        return sorted(executor._processes or {}) if executor is not None else []

    def prepare(self, texts: Sequence[BundleText]) -> PreparedBatch | None:
        """The texts, sent to the processes in chunks; None: prepare them in the loop.

        None while there is no pool to use: none configured, a batch too small,
        or processes not up yet (a batch of :data:`START_BUNDLES` starts them).
        """
        if self.processes == 0 or len(texts) < MIN_BUNDLES:
            return None
        if not self.ready:
            if len(texts) >= START_BUNDLES or self._executor is not None:
                self._start()
            return None
        executor = self._executor
        assert executor is not None
        loop = asyncio.get_running_loop()
        starts = [0, *range(MIN_BUNDLES, len(texts), CHUNK)]
        ends = [*starts[1:], len(texts)]
        try:
            return PreparedBatch(
                [
                    (
                        start,
                        asyncio.wrap_future(
                            executor.submit(prepare_bundles, list(texts[start:end]), self.hashing),
                            loop=loop,
                        ),
                    )
                    for start, end in zip(starts, ends, strict=True)
                ]
            )
        except (BrokenProcessPool, RuntimeError):
            self.failed()
            return None

    def failed(self, error: BaseException | None = None) -> None:
        """A call failed: count it, and start the processes afresh on a later batch."""
        POOL_FAILURES.inc()
        log.warning(
            "curation_pool_failed processes=%d error=%r: preparing in the loop for %.0f s",
            self.processes,
            error,
            RETRY_S,
        )
        self._retry_at = time.monotonic() + RETRY_S
        self.close()

    def _start(self) -> None:
        if time.monotonic() < self._retry_at:
            return
        if self._executor is not None:
            warm = self._warm
            if warm is not None and warm.done() and warm.exception() is not None:
                # They never came up: that does not mend itself (a main module that
                # starts a worker when imported, a missing module). The loop does it.
                POOL_FAILURES.inc()
                log.error(
                    "curation_pool_unavailable processes=%d error=%r: the curator prepares "
                    "its bundles in the event loop from now on",
                    self.processes,
                    warm.exception(),
                )
                self.close()
                self.processes = 0
            return
        # spawn, not fork: the worker has threads (aiokafka's, the producer's), and a
        # forked child of a threaded process may inherit a held lock.
        self._executor = ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=get_context("spawn"),
            initializer=_child_start,
            initargs=(os.getpid(),),
        )
        self._warm = self._executor.submit(prepare_bundles, [WARM_UP], self.hashing)
        log.info("curation_pool_started processes=%d", self.processes)

    def close(self) -> None:
        """Stop the processes (a call in flight is not waited for)."""
        executor, self._executor, self._warm = self._executor, None, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
