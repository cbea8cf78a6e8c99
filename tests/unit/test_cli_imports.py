"""The CLI's command modules import nothing of Faust, Kafka's client or scipy until a command runs.

`learnops --help` and the read-only commands start fast because of it
(tests/integration/test_cli.py times them against the services).
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from tests.services import REPO

HEAVY = ("faust", "mode", "aiokafka", "scipy", "datasketch")

PROBE = """
import sys
import learnops.cli.main
import learnops.cli.policy, learnops.cli.datasets, learnops.cli.skills, learnops.cli.experiments
print(",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def in_a_fresh_interpreter(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new Python process of this environment; its output, checked."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )


def test_the_command_modules_import_no_faust_kafka_client_or_scipy() -> None:
    started = time.perf_counter()
    result = in_a_fresh_interpreter(PROBE.format(heavy=HEAVY))
    print(f"importing every command module: {time.perf_counter() - started:.2f} s")
    assert result.stdout.strip() == ""


def test_reading_the_learning_configuration_imports_no_datasketch() -> None:
    # Commands that read config/learning.yaml (experiment replays, bandit refusals) and
    # workers without the curator: datasketch's package imports scipy.integrate (~0.3 s).
    probe = (
        "import sys\n"
        "from agents.config import load_learning_config\n"
        "load_learning_config(None)\n"
        "print(','.join(sorted(m for m in ('datasketch', 'scipy.integrate') if m in sys.modules)))"
    )
    result = in_a_fresh_interpreter(probe)
    assert result.stdout.strip() == ""


def test_help_imports_no_command_module() -> None:
    probe = (
        "import sys\n"
        "from learnops.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith(('learnops.cli.', "
        "'learnops.demo', 'agents', 'storage', 'pydantic')))), file=sys.stderr)\n"
    )
    result = in_a_fresh_interpreter(probe)
    assert result.stderr.strip() == "learnops.cli.main", result.stderr
    assert "policy" in result.stdout and "worker" in result.stdout


def test_serve_takes_its_port_from_learnops_console_port(monkeypatch: Any) -> None:
    """As README says of the local ports (it bound 8080 whatever the variable said)."""
    from learnops.cli.main import serve
    from learnops.console.__main__ import main

    monkeypatch.setenv("LEARNOPS_CONSOLE_PORT", "36555")
    assert serve.make_context("serve", []).params["port"] == 36555
    assert serve.make_context("serve", ["--port", "9000"]).params["port"] == 9000
    ran: list[tuple[str, int]] = []
    monkeypatch.setattr("learnops.console.__main__.serve", lambda h, p: ran.append((h, p)))
    monkeypatch.setattr(sys, "argv", ["learnops-console"])
    main()
    assert ran == [("127.0.0.1", 36555)]
