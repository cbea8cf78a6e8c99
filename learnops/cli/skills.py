"""`learnops skills show DOER` and `learnops skills list`, and the demo's skill-card step.

Both read the current cards from PostgreSQL (``skill_cards``), which the
skill-card stage (agents/skills.py) keeps, one per tenant and doer; `--tenant`
shows one tenant's only, and `--json` prints the stored events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from learnops.cli.main import (
    GroupedCommand,
    as_known,
    closest,
    command,
    database,
    fail,
    group,
    json_option,
)
from storage.skills import (
    card_history,
    carded_doers,
    current_cards,
    open_requests,
)

if TYPE_CHECKING:
    from models.events import SkillCard


@group("Skill cards: what each doer is good and bad at, with the figures that say so.")
def skills() -> None:
    pass


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _policy(card: SkillCard) -> str:
    return "–" if card.policy_id is None else f"{card.policy_id}@{card.policy_version}"


def _plain(title: str) -> Table:
    """A table in the CLI's style (agents' lists too): a rule under the header, no box.

    Piped into a file or another command it stays one line per row, as every
    other list of the CLI does (learnops.cli.main.table).
    """
    from rich import box

    return Table(
        title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, show_edge=False
    )


def cards_table(cards: list[SkillCard], title: str = "Skill cards (current)") -> Table:
    """One row per card: runs, gate pass rate, CRL and its deltas, and how many findings."""
    table = _plain(title=title)
    for name, justify in (
        ("doer", "left"),
        ("tenant", "left"),
        ("as of", "left"),
        ("runs", "right"),
        ("gate pass", "right"),
        ("mean CRL", "right"),
        ("Δ 7d", "right"),
        ("Δ 30d", "right"),
        ("strengths", "right"),
        ("weaknesses", "right"),
        ("failure modes", "right"),
        ("resource issues", "right"),
        ("best model", "left"),
        ("policy", "left"),
    ):
        table.add_column(
            name,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=name == "doer",
            overflow="fold",
        )
    for card in cards:
        f = card.findings
        best = card.best_models[0]["model"] if card.best_models else "–"
        table.add_row(
            card.doer,
            card.tenant_id,
            card.as_of.isoformat(),
            str(card.runs),
            _pct(card.gate_pass_rate),
            _f(card.mean_crl),
            _signed(card.delta_7d),
            _signed(card.delta_30d),
            str(len(f.get("strengths", []))),
            str(len(f.get("weaknesses", []))),
            str(len(f.get("failure_modes", []))),
            str(len(f.get("resource_issues", []))),
            str(best),
            _policy(card),
        )
    return table


def print_card(console: Console, card: SkillCard, requests: list[Any] = ()) -> None:  # type: ignore[assignment]
    """The whole card: figures, findings with measured value and threshold, models, experiments."""
    summary = _plain(
        title=f"Skill card of {card.doer}, tenant {card.tenant_id}, as of {card.as_of}"
        " (lower CRL is better)"
    )
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    for name, value in (
        ("runs today", str(card.runs)),
        ("gate pass rate", _pct(card.gate_pass_rate)),
        ("mean CRL today", _f(card.mean_crl)),
        ("Δ vs 7 days before", _signed(card.delta_7d)),
        ("Δ vs 30 days before", _signed(card.delta_30d)),
        ("runs, last 7 days", str(card.runs_7d)),
        ("mean CRL, last 7 days", _f(card.crl_mean_7d)),
        ("p95 CRL, last 7 days", _f(card.crl_p95_7d)),
        ("runs, last 30 days", str(card.runs_30d)),
        ("security criticals, 30 days", str(card.security_criticals_30d)),
        ("active policy", _policy(card)),
    ):
        summary.add_row(name, value)
    console.print(summary)

    findings = _plain(title="Findings (each with its measured figure and threshold)")
    for name in ("section", "rule", "subject", "measured", "threshold", "finding"):
        findings.add_column(name)
    for section in ("strengths", "weaknesses", "failure_modes", "resource_issues"):
        for item in card.findings.get(section, []):
            findings.add_row(
                section.replace("_", " "),
                str(item["rule"]),
                str(item["subject"]),
                f"{item['measured']:.4g}" if isinstance(item["measured"], float) else "",
                f"{item['comparison']} {item['threshold']:g}"
                if isinstance(item["threshold"], float)
                else "",
                str(item["text"]),
            )
    console.print(findings)

    models = _plain(title="Best models (rank sets and 'distinct' hold jointly at the rules' level)")
    for name in ("rank", "model", "mean CRL", "could rank", "runs", "distinct from next"):
        models.add_column(name)
    for m in card.best_models:
        low, high = m.get("rank_low"), m.get("rank_high")
        models.add_row(
            str(m["rank"]),
            str(m["model"]),
            _f(m["mean_crl"]),  # type: ignore[arg-type]
            "–" if low is None else (str(low) if low == high else f"{low}–{high}"),
            str(m["n"]),
            {True: "yes", False: "no", None: "–"}[m["distinct_from_next"]],  # type: ignore[index]
        )
    console.print(models)

    if card.experiments:
        experiments = _plain(title="Recent experiments")
        for name in ("experiment", "type", "candidate", "status", "answers request", "created"):
            experiments.add_column(name)
        for e in card.experiments:
            candidate = (
                f"{e['policy_id']}@{e['policy_version']}" if e.get("policy_id") is not None else ""
            )
            request = (
                f"{e.get('request_reason')} ({str(e['request_id'])[:8]})"
                if e.get("request_id")
                else "–"
            )
            experiments.add_row(
                str(e.get("experiment_id")),
                str(e.get("experiment_type", "")),
                candidate,
                str(e.get("status", "")),
                request,
                str(e.get("created_at", "")),
            )
        console.print(experiments)
    if requests:
        shown = _plain(title="Open experiment requests (learning triggers)")
        for name in ("reason", "opened", "message"):
            shown.add_column(name)
        for r in requests:
            shown.add_row(r["reason"], r["opened_at"].isoformat(timespec="seconds"), r["message"])
        console.print(shown)
    for note in card.notes:
        console.print(f"note: {note}")


@command(
    skills,
    "show",
    click.argument("doer"),
    click.option("--tenant", help="The tenant whose card to show (needed if several have one)."),
    click.option("--json", "as_json", is_flag=True, help="Print the card as JSON."),
    click.option(
        "--history",
        "history",
        type=click.IntRange(min=0),
        default=0,
        help="Also list N earlier cards.",
    ),
)
async def skills_show(
    self: GroupedCommand, doer: str, tenant: str | None, as_json: bool, history: int
) -> None:
    """Show a doer's current skill card (of one tenant: each tenant has its own)."""
    async with database(self) as pool:
        mine = await current_cards(pool, tenant, doer=doer)
        doers: list[str] = []
        if not mine:
            doers = await carded_doers(pool)
            found = as_known(doer, doers)
            if found is not None and found != doer:
                doer = found
                mine = await current_cards(pool, tenant, doer=doer)
        if not mine and tenant is not None and doer in doers:
            # The doer has cards, not of this tenant: name the tenants that have one.
            having = sorted(c.tenant_id for c in await current_cards(pool, None, doer=doer))
            fail(
                f"no skill card of tenant {tenant!r} for doer {doer!r}; its cards are of "
                f"{', '.join(map(repr, having))}{closest(tenant, having)}"
            )
        if not mine:
            whose = f" of tenant {tenant!r}" if tenant else ""
            fail(
                f"no skill card{whose} for doer {doer!r}{closest(doer, doers)} "
                "(a card appears once the worker has scored a run of the doer; "
                "`learnops skills list` shows them)"
            )
        if len(mine) > 1:
            tenants = ", ".join(c.tenant_id for c in mine)
            fail(f"doer {doer!r} has a card for each of the tenants {tenants}: name one (--tenant)")
        card = mine[0]
        requests = await open_requests(pool, doer)
        earlier = await card_history(pool, doer, card.tenant_id, history + 1) if history else []
    if as_json:
        self.say(orjson.dumps(card.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
        return
    console = self.console()
    print_card(console, card, requests)
    if earlier[1:]:
        title = f"Earlier cards of {doer} (tenant {card.tenant_id}), newest first"
        console.print(cards_table(earlier[1:], title=title))


@command(skills, "list", click.option("--tenant", help="Only this tenant's cards."), json_option)
async def skills_list(self: GroupedCommand, tenant: str | None, as_json: bool) -> None:
    """List the current skill cards: one per tenant and doer."""
    async with database(self) as pool:
        cards = await current_cards(pool, tenant)
    if as_json:
        rows = [c.model_dump(mode="json") for c in cards]
        self.say(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    self.console().print(cards_table(cards))
    if not cards:
        self.say("no skill cards yet: the worker writes one per tenant and doer as runs are scored")
