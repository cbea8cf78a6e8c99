"""A simulated orchestrator: what `make demo`, the tests, the fault suite and the benches publish.

* :mod:`learnops.simulation.orchestrator` — realistic learning bundles and
  realistic bad input, seeded (``Orchestrator``);
* :mod:`learnops.simulation.canary` — an orchestrator that routes its tasks with
  the Router's rules and gives each policy version a quality
  (``CanaryOrchestrator``), for canaries.

It sits beside the client, not inside the service: it imports the contract
(``models``) and the routing rules (``learning``), never ``agents`` or
``storage``.
"""
