"""A policy's tunable parameters: the options it leaves open per phase, for the bandit to choose.

A policy artifact (the signed JSON object of ``RegisterPolicy.artifact``) may
carry, under the key ``"tunables"``, per phase the parameters it leaves open
and their options::

    {"tunables": {"draft": {"router.model": ["model-a-large", "model-b-medium",
                                             "model-c-small"],
                            "rag.top_k": ["4", "8", "16"]}}}

Options are names (text), as the bundle reports them. A parameter a policy
has settled is under ``"fixed"`` (phase → parameter → option); the bandit's
candidate policies move a parameter from ``"tunables"`` to ``"fixed"``
(``learning.tuning``). A run names the option
it used of each parameter in ``RunCompleted.options`` (parameter → option);
:func:`undeclared_options` says why a run's options are not the active
policy's, for the DLQ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import Field, RootModel, ValidationError, model_validator

from models.base import Identifier

TUNABLES_KEY = "tunables"
FIXED_KEY = "fixed"

Options = Annotated[list[Identifier], Field(min_length=2, max_length=50)]


class Tunables(RootModel[dict[Identifier, dict[Identifier, Options]]]):
    """Phase → parameter → its options (at least two, no repeats)."""

    model_config = {"frozen": True, "strict": True}

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        for phase, parameters in self.root.items():
            for parameter, options in parameters.items():
                repeated = sorted({o for o in options if options.count(o) > 1})
                if repeated:
                    raise ValueError(
                        f"phase {phase!r}, parameter {parameter!r}: option "
                        f"{', '.join(repeated)} is listed twice"
                    )
        return self

    def options(self, phase: str, parameter: str) -> list[str] | None:
        """The declared options of ``parameter`` in ``phase``, or None when it is not tunable."""
        return self.root.get(phase, {}).get(parameter)


def tunables_of(artifact: Mapping[str, Any]) -> Tunables:
    """The artifact's declared tunables (none when it has no ``"tunables"`` key).

    Raises ``ValueError`` naming what is wrong with a malformed declaration.
    """
    declared = artifact.get(TUNABLES_KEY)
    if declared is None:
        return Tunables({})
    try:
        return Tunables.model_validate(declared)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(
            f"policy {TUNABLES_KEY}{'.' + where if where else ''}: {first['msg']}"
        ) from None


def undeclared_options(options: Mapping[str, str], phase: str, tunables: Tunables) -> str | None:
    """Why a run's ``options`` are not among what the policy declares for ``phase``, or None."""
    for parameter, option in sorted(options.items()):
        declared = tunables.options(phase, parameter)
        if declared is None:
            return f"parameter {parameter!r} is not tunable in phase {phase!r} of the policy"
        if option not in declared:
            return (
                f"option {option!r} of {parameter!r} in phase {phase!r} is not one the policy "
                f"declares ({', '.join(declared)})"
            )
    return None
