"""YAML files read as YAML 1.2 (core schema), with duplicate keys refused.

PyYAML reads YAML 1.1: ``NO`` and ``off`` become false, ``0755`` becomes 493
and ``1:20`` becomes 80, silently, in files whose values end up signed or
steering a rollout. ruamel.yaml's safe loader reads YAML 1.2: only
``true``/``false`` (any case of the first letter or all) are booleans, ``0o755``
is the only octal, and a key given twice is an error. A ``%YAML 1.1`` directive
would switch it back to 1.1 typing, so any version but 1.2 is refused.

Errors name the file, the line and column, and the rule; never the values
there (a policy file may hold a prompt or a credential).
"""

from __future__ import annotations

import re
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

_DIRECTIVE = re.compile(r"^%YAML[ \t]+(\S+)", re.MULTILINE)


class YAMLFileError(ValueError):
    """A YAML file is malformed, uses another YAML version, or repeats a key."""


def load_yaml(text: str, source: object = "<text>") -> Any:
    """Return the document in ``text`` read as YAML 1.2; YAMLFileError names the place and rule."""
    for version in _DIRECTIVE.findall(text):
        if version != "1.2":
            raise YAMLFileError(f"{source} declares YAML {version}; only YAML 1.2 is read")
    try:
        return YAML(typ="safe", pure=True).load(text)
    except DuplicateKeyError as exc:
        raise YAMLFileError(f"{source}{_where(exc)}: a key is given twice") from None
    except MarkedYAMLError as exc:
        raise YAMLFileError(f"{source}{_where(exc)}: {exc.problem or exc.context}") from None
    except YAMLError as exc:
        raise YAMLFileError(f"{source} is not valid YAML ({type(exc).__name__})") from None


def _where(exc: MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    return "" if mark is None else f", line {mark.line + 1}, column {mark.column + 1}"
