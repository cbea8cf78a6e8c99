"""`python -m learnops.console [--host H] [--port P]`: run the console with uvicorn."""

from __future__ import annotations

import argparse
import os

import uvicorn

from agents.settings import load_settings
from learnops.console.app import create_console


def serve(host: str, port: int) -> None:
    """Run the console on HOST:PORT until interrupted."""
    settings = load_settings()
    console = create_console(settings.database_dsn, settings.learnops_topics_file)
    uvicorn.run(console, host=host, port=port)


def main() -> None:
    parser = argparse.ArgumentParser(prog="learnops-console")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("LEARNOPS_CONSOLE_PORT", 8080))
    )
    args = parser.parse_args()
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
