"""The CLI's command modules import nothing of Faust, Kafka's client or scipy until a command runs.

`learnops --help` and the read-only commands start fast because of it
(tests/integration/test_cli.py times them against the services).
"""

from __future__ import annotations

import subprocess
import sys
import time

from tests.services import REPO

HEAVY = ("faust", "mode", "aiokafka", "scipy", "datasketch")

PROBE = """
import sys
import learnops.cli.main
import learnops.cli.policy, learnops.cli.datasets, learnops.cli.skills, learnops.cli.experiments
print(",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def test_the_command_modules_import_no_faust_kafka_client_or_scipy() -> None:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    print(f"importing every command module: {time.perf_counter() - started:.2f} s")
    assert result.stdout.strip() == ""


def test_help_imports_no_command_module() -> None:
    probe = (
        "import sys\n"
        "from learnops.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith(('learnops.cli.', "
        "'learnops.demo', 'agents', 'storage', 'pydantic')))), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stderr.strip() == "learnops.cli.main", result.stderr
    assert "policy" in result.stdout and "worker" in result.stdout
