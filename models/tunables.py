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
from typing import Annotated, Any, Self, TypeVar

from pydantic import Field, RootModel, ValidationError, model_validator

from models.base import Identifier

TUNABLES_KEY = "tunables"
FIXED_KEY = "fixed"

Options = Annotated[list[Identifier], Field(min_length=2, max_length=50)]


Parameters = Annotated[dict[Identifier, Options], Field(min_length=1)]


class Tunables(RootModel[dict[Identifier, Parameters]]):
    """Phase → parameter → its options (at least two, no repeats); a phase names one or more."""

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


class Fixed(RootModel[dict[Identifier, dict[Identifier, Identifier]]]):
    """Phase → parameter → the option a policy has settled on."""

    model_config = {"frozen": True, "strict": True}


_M = TypeVar("_M", Tunables, Fixed)


def tunables_of(artifact: Mapping[str, Any]) -> Tunables:
    """The artifact's declared tunables (none when it has no ``"tunables"`` key).

    Raises ``ValueError`` naming what is wrong with a malformed declaration: a
    malformed ``"tunables"`` or ``"fixed"``, or a parameter that is both (a run
    of such a policy could not say which it used).
    """
    tunables = _validated(Tunables, artifact, TUNABLES_KEY)
    fixed = _validated(Fixed, artifact, FIXED_KEY)
    for phase, parameters in sorted(fixed.root.items()):
        for parameter, option in sorted(parameters.items()):
            declared = tunables.options(phase, parameter)
            if declared is not None:
                raise ValueError(
                    f"policy parameter {parameter!r} of phase {phase!r} is both tunable "
                    f"({', '.join(declared)}) and fixed ({option}): a policy leaves a "
                    f"parameter open under {TUNABLES_KEY!r} or settles it under {FIXED_KEY!r}"
                )
    return tunables


def _validated(model: type[_M], artifact: Mapping[str, Any], key: str) -> _M:
    declared = artifact.get(key)
    if declared is None:
        return model({})
    try:
        return model.model_validate(declared)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        hint = (
            ' (options are names: quote a number, as "4")'
            if first["type"] == "string_type" and isinstance(first.get("input"), int | float)
            else ""
        )
        raise ValueError(
            f"policy {key}{'.' + where if where else ''}: {first['msg']}{hint}"
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
