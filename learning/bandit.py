"""Thompson-sampling allocations among a policy's declared options, from the run loss.

A policy may leave a choice open per doer, phase and parameter (which model
the router uses, a retrieval ``top_k``). Every run's CRL scores the option that
was used; this module turns those losses into the share of tasks each option
should get next (lower CRL is better).

The model of the loss
---------------------
The objective is the **mean** CRL, the quantity the canary tests when the
winning option is proposed as a policy. A variance-stabilising transform
(Gaussian Thompson sampling on ``log1p(loss)``) would change that objective:
an option that is 0 on 90 % of runs and 5 on the rest has a mean loss of 0.5
but a mean ``log1p`` of 0.18, so it would beat an option that is always 0.4
(mean 0.4, mean ``log1p`` 0.34), and the canary would then reject it. So each
option's posterior is a normal approximation to the posterior of its mean loss
(the central limit theorem, which holds for the skewed and zero-heavy CRL once
a few dozen runs are in) with two guards for the runs before that:

* **Variance guard** — an option's variance is the larger of its own sample
  variance and the pooled within-option variance. An option on the floor that
  has seen ten zeros of a zero-heavy loss has a sample variance of 0 and would
  otherwise look certain; the same guard keeps the canary's small arm honest
  (``learning.canary``, ``variance_guard``).
* **Prior and tails** — ``prior_weight`` pseudo-runs at the pooled mean, and a
  Student-t draw with the option's effective runs − 1 degrees of freedom (the
  marginal of the normal-inverse-gamma posterior of the mean; Murphy,
  "Conjugate Bayesian analysis of the Gaussian distribution", 2007, §3.5).

A draw of option k's mean is
``μ_k + t_ν · sqrt(v_k / (n_k + n_0))``, with ``μ_k = (n_k m_k + n_0 m̄) / (n_k + n_0)``.
``bench/bandit_sim.py`` checks the choice on lognormal and zero-heavy losses
(docs/bandits.md).

Drift
-----
Statistics are discounted (Raj & Kalyani, "Taming non-stationary bandits: a
Bayesian approach", 2017, discounted Thompson sampling): every run of the
(doer, phase, parameter) multiplies every option's effective count and sum of
squares by ``discount`` before the run is added, so an option's estimate
forgets with a memory of about ``1 / (1 − discount)`` runs of the parameter
and an option left on the floor regains uncertainty, and traffic, when the
others change. The weighted update is West's ("Updating mean and variance
estimates: an improved method", CACM 1979). The undiscounted run count is kept
for the "enough runs" rule.

Allocation
----------
The share of each option is its posterior probability of being best (Monte
Carlo with a seeded ``numpy.random.Generator``, so the same statistics and seed
give the same allocation), floored at ``min_share`` and renormalised:
``share_k = min_share + (1 − K·min_share) · P(best_k)``. This is the
randomised probability matching of Thompson sampling applied to a batch, as
GrowthBook's bandits re-weight periodically. The shares use the draws with
their spread scaled by ``temper`` (0.6): greedier than the posterior, which
lowers the regret at the horizons of docs/bandits.md; P(best) as reported and
the rule that proposes an option use the posterior as it is.

The hurdle model's rates of positive losses are pooled across options by
empirical Bayes (:func:`rate_prior`): as far as the options' rates agree
within their sampling noise, each option's rate borrows the others' runs, so
a zero-heavy loss whose options differ in the size of their losses, not in
how often there is one, is ranked by the positive part alone.

Guardrails
----------
Security criticals and API breakages are compared with the canary's count
test (``learning.event_guardrails``): for option k, a run with an event is one
of k's runs with exactly k's share in force if k is no worse than the others,
so every option has a conditional-binomial mixture martingale against the rest.
That stays valid however the allocation moves. An option whose martingale
crosses ``1 / guardrail_alpha`` (the canary's ``DEFAULT_ALPHA``) gets only the
floor, can never be declared best, and stays excluded (the running maximum
never falls).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from learning.event_guardrails import DEFAULT_ALPHA, EventGuardrail

GUARDRAIL_METRICS: tuple[str, ...] = ("security_criticals", "api_breakages")
CLIP = 3.0  # the change detector's bound on one run's standardised deviation
RECALL = 3.0  # count-test wealth that sends a released option back on probation
RATE_PRIOR_CAP = 10_000.0  # most pseudo-runs at the pooled rate (rates that look equal)
ProbeStatus = Literal["held", "unexplained", "undecided", "cleared", "open"]


@dataclass(frozen=True)
class BanditConfig:
    """Settings of one parameter's bandit.

    ``discount`` — per-run forgetting factor (memory ≈ 1/(1 − discount) runs);
    ``min_share`` — exploration floor per option; ``draws`` — Monte Carlo draws
    for P(best); ``level`` and ``min_runs`` — the "one option is best" rule:
    P(best) ≥ ``level``, the best option with at least ``min_runs`` runs and every
    other eligible option with at least ``min_runs_other``; ``prior_weight`` —
    pseudo-runs at the pooled mean; ``guardrail_alpha`` — level of the count test;
    ``temper`` — the spread of the posterior draws the shares are computed from,
    about each option's median (below 1: greedier; P(best) and the "best" rule
    use the posterior itself); ``rate_pooling`` — shrink the options' rates of
    positive losses to their pooled rate as far as their spread allows
    (:func:`rate_prior`), instead of by ``rate_prior_weight`` pseudo-runs only;
    ``change_*`` — the change detector (:meth:`OptionStats.changed`; a
    ``change_threshold`` of 0 turns it off).
    """

    discount: float = 0.9995
    model: str = "hurdle"
    change_threshold: float = 15.0
    change_drift: float = 0.25
    change_min_runs: int = 20
    change_odds: float = 2.0
    change_rate_llr: float = 12.0
    misfit_z: float = 3.0
    probation_runs: int = 20
    probe_runs: int = 150
    temper: float = 0.6
    min_share: float = 0.02
    draws: int = 4000
    level: float = 0.95
    min_runs: int = 200
    min_runs_other: int = 30
    prior_weight: float = 1.0
    variance_prior_weight: float = 20.0
    rate_prior_weight: float = 5.0
    rate_pooling: bool = True
    guardrail_alpha: float = DEFAULT_ALPHA
    guardrail_metrics: tuple[str, ...] = GUARDRAIL_METRICS
    release_ratio: float = 2.0
    release_alpha: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount {self.discount} is not in (0, 1]")
        if self.model not in ("hurdle", "normal"):
            raise ValueError(f"model {self.model!r} is not 'hurdle' or 'normal'")
        if self.change_threshold < 0 or self.change_drift < 0:
            raise ValueError("change_threshold and change_drift must not be negative")
        if self.change_odds <= 1.0 or self.change_rate_llr <= 0.0:
            raise ValueError("change_odds must be above 1 and change_rate_llr positive")
        if self.probation_runs < 0:
            raise ValueError(f"probation_runs {self.probation_runs} is negative")
        if self.probe_runs < 1:
            raise ValueError(f"probe_runs {self.probe_runs} is below 1")
        if not 0.0 <= self.min_share < 1.0:
            raise ValueError(f"min_share {self.min_share} is not in [0, 1)")
        if self.draws < 1:
            raise ValueError(f"draws {self.draws} is below 1")
        if not 0.5 < self.level < 1.0:
            raise ValueError(f"level {self.level} is not in (0.5, 1)")
        if self.prior_weight <= 0:
            raise ValueError(f"prior_weight {self.prior_weight} is not positive")
        if not 0.0 < self.guardrail_alpha < 1.0:
            raise ValueError(f"guardrail_alpha {self.guardrail_alpha} is not in (0, 1)")
        if self.release_ratio <= 1.0 or not 0.0 < self.release_alpha < 1.0:
            raise ValueError(
                f"release_ratio {self.release_ratio} must be above 1 and"
                f" release_alpha {self.release_alpha} in (0, 1)"
            )


@dataclass
class OptionStats:
    """One option's loss statistics (all runs, and the hurdle parts), change detector, guardrails.

    ``weight``/``mean``/``m2`` are the (discounted) count, mean and sum of squares
    of the loss; ``zeros`` the weight of runs with a loss of exactly 0;
    ``log_weight``/``log_mean``/``log_m2`` the same moments of ``log(loss)`` over
    the runs with a positive loss. ``runs`` counts every run folded in, ``fresh``
    those since the option's last detected change; ``cusum`` holds the two-sided
    CUSUM sums of the standardised log loss and of the zero/positive indicator.
    """

    weight: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    runs: int = 0
    guardrails: dict[str, EventGuardrail] = field(default_factory=dict)
    zeros: float = 0.0
    log_weight: float = 0.0
    log_mean: float = 0.0
    log_m2: float = 0.0
    fresh: int = 0
    changes: int = 0
    cusum: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    released: bool = False
    probe_runs: int = 0
    probe_tests: dict[str, EventGuardrail] = field(default_factory=dict)
    no_harm_tests: dict[str, EventGuardrail] = field(default_factory=dict)
    shown_on: set[str] = field(default_factory=set)  # metrics its no-harm test has decided
    probes_expected: float = 0.0  # probes asked for by the live runs folded while probed
    probed: bool = False  # probed under this policy version: only its probes release it
    weight2: float = 0.0  # sum of the squared run weights: effective runs = weight² / weight2

    def decay(self, factor: float) -> None:
        """Forget: scale the effective counts and the sums of squares by ``factor``."""
        self.weight *= factor
        self.weight2 *= factor * factor
        self.m2 *= factor
        self.zeros *= factor
        self.log_weight *= factor
        self.log_m2 *= factor

    def add(self, loss: float) -> None:
        """Fold one run's loss in with weight 1 (West's weighted update)."""
        if not math.isfinite(loss) or loss < 0:
            raise ValueError(f"loss {loss!r} is not a finite non-negative number")
        self.runs += 1
        self.fresh += 1
        self.weight += 1.0
        self.weight2 += 1.0
        delta = loss - self.mean
        self.mean += delta / self.weight
        self.m2 += delta * (loss - self.mean)
        if loss == 0.0:
            self.zeros += 1.0
            return
        log_loss = math.log(loss)
        self.log_weight += 1.0
        delta = log_loss - self.log_mean
        self.log_mean += delta / self.log_weight
        self.log_m2 += delta * (log_loss - self.log_mean)

    def restart(self) -> None:
        """Drop the loss statistics after a detected change (runs and guardrails are kept)."""
        self.weight = self.mean = self.m2 = self.zeros = self.weight2 = 0.0
        self.log_weight = self.log_mean = self.log_m2 = 0.0
        self.fresh = 0
        self.changes += 1
        self.cusum = [0.0, 0.0, 0.0, 0.0]

    def changed(self, loss: float, log_sd: float, config: BanditConfig) -> bool:
        """Feed the change detector one run's loss; whether it signals a shift in the option.

        Two two-sided CUSUMs (Page 1954). Of ``log(loss)`` over the positive runs,
        standardised by the pooled ``log_sd``: each run adds its deviation from the
        option's estimate (clipped to ±``CLIP``, so that rare outliers, a shape of
        the loss, do not add up to a shift) minus ``change_drift``. And of the
        positive/zero indicator as Bernoulli log-likelihood ratios against the
        option's rate with its odds times and divided by ``change_odds``: a normal
        approximation of the indicator, at a 10 % rate, raised most of the false
        alarms on a zero-heavy loss, since a few positive runs in a row looked like
        a shift. These sums signal at a log-likelihood ratio of ``change_rate_llr``,
        the others above ``change_threshold``. The detector starts once the option
        has ``change_min_runs`` positive runs since its last change, so an estimate
        exists to deviate from.

        Measuring from the estimate before a suspected change (frozen while a sum
        is above 0) finds a shift sooner, and was measured and not taken: with the
        reference estimated from the runs it has, it raised false alarms at every
        loss with many positive runs (docs/bandits.md).
        """
        if config.change_threshold <= 0 or self.log_weight < config.change_min_runs:
            return False
        if loss > 0 and log_sd > 0:
            z = min(max((math.log(loss) - self.log_mean) / log_sd, -CLIP), CLIP)
            self.cusum[0] = max(0.0, self.cusum[0] + z - config.change_drift)
            self.cusum[1] = max(0.0, self.cusum[1] - z - config.change_drift)
        p = (self.weight - self.zeros + 1.0) / (self.weight + 2.0)
        to_threshold = config.change_threshold / config.change_rate_llr
        for j, odds in ((2, config.change_odds), (3, 1.0 / config.change_odds)):
            shifted = p * odds / (1.0 - p + p * odds)
            llr = math.log(shifted / p) if loss > 0 else math.log((1.0 - shifted) / (1.0 - p))
            self.cusum[j] = max(0.0, self.cusum[j] + llr * to_threshold)
        return max(self.cusum) > config.change_threshold

    @property
    def variance(self) -> float:
        """Weighted variance (reliability weights); 0 with one effective run or fewer."""
        return self.m2 / (self.weight - 1.0) if self.weight > 1.0 else 0.0

    def misfit(self, log_var: float) -> float:
        """How far the lognormal mean of the positive losses is from their sample mean, in SEs.

        The sample mean of the positive part against ``exp(μ + σ²/2)`` of its logs
        (``σ²`` the pooled ``log_var``), in standard errors of the sample mean;
        0 with fewer than 30 positive runs. A large value says the positive part is
        not lognormal, so the hurdle model may mis-rank means.
        """
        positive = self.weight - self.zeros
        if self.log_weight < 30 or positive < 30:
            return 0.0
        pos_mean = self.mean * self.weight / positive
        pos_m2 = self.m2 - self.zeros * self.mean**2 - positive * (pos_mean - self.mean) ** 2
        se = math.sqrt(max(pos_m2, 0.0) / (positive - 1.0) / positive)
        lognormal = math.exp(self.log_mean + log_var / 2.0)
        return abs(pos_mean - lognormal) / se if se > 0 else 0.0

    def harmful(self, alpha: float) -> str | None:
        """The first guardrail metric on which this option has more events than the rest."""
        for metric, test in sorted(self.guardrails.items()):
            if test.harmful(alpha):
                return metric
        return None

    def review_probation(self, probation_runs: int, probes: ProbeStatus = "open") -> None:
        """Release the option from probation, or recall it, from its probes or its live runs.

        Released when its probes show it no worse (``probes == "cleared"``:
        :meth:`BanditState.probe_status`); its live count tests then set their
        gains aside (:meth:`EventGuardrail.set_aside_gains`): the runs they
        counted at the floor are in the probe tests that decided, and one event
        at the floor share would otherwise leave a live test at a wealth of
        about 23 and the option on the floor for thousands of runs. An option
        never probed is released by its live runs instead: ``probation_runs``
        of them and, on every guardrail metric, a count test's current wealth
        (not its running maximum) of at most 1, so what events it had are
        explained by the others' rate at the shares in force.

        Recalled when a live test's wealth rises above ``RECALL``: one event at
        the floor share does that (wealth about 23), while one event at a large
        share (wealth about 1.02) does not, so an option holding most of the
        traffic does not flap back to the floor on the events any option has.
        A recalled option is probed again and must be shown no worse again:
        its no-harm tests and probe count start afresh; its harm tests go on.
        """
        if self.released:
            recall = math.log(RECALL)
            self.released = all(t.log_mixture <= recall for t in self.guardrails.values())
            if not self.released:
                self.probe_runs = 0
                self.probes_expected = 0.0
                self.no_harm_tests = {}
                self.shown_on = set()
            return
        self.released = self.releasable(probation_runs, probes)
        if self.released and probes == "cleared":
            for test in self.guardrails.values():
                test.set_aside_gains()

    def releasable(self, probation_runs: int, probes: ProbeStatus = "open") -> bool:
        """Shown no worse by its probes; never probed: its probation runs, no count test above 1.

        An option that has been probed is released by its probes alone: a live
        rule beside them let options with two or three times the others' rate
        of events leave the floor on a run of luck (docs/bandits.md, *Probes*),
        and after a recall it would release the option again on runs still
        routed at its large share before the next allocation asks for probes.
        One never probed (an orchestrator that runs no probes) has the live rule.
        """
        if probes == "cleared":
            return True
        if probes != "open" or self.probed:
            return False
        return self.runs >= probation_runs and all(
            test.log_mixture <= 0.0 for test in self.guardrails.values()
        )

    def add_probed(
        self, metric: str, arm: str, events: int, share: float, config: BanditConfig
    ) -> None:
        """Count a run with events while the option is probed: its harm and no-harm tests."""
        self.probe_tests.setdefault(metric, EventGuardrail()).add(arm, events, share)
        no_harm = self.no_harm_tests.setdefault(
            metric, EventGuardrail(ratios=(config.release_ratio,))
        )
        no_harm.add(arm, events, share)

    def probes_caught_up(self) -> bool:
        """Whether the probes received keep up with those its folded live runs asked for.

        Each live run folded while the option is probed asks for a probe with
        probability ``probe_share``; the probes of those tasks arrive later (or,
        lost, never). While more are missing than the count's noise allows
        (two standard deviations at the least, ``2·√expected``), the no-harm
        test is ahead of its candidate trials: the control trials of a batch's
        live runs are in, its probes not yet, and a crossing then would be a
        crossing of the order, not of the rates (a review measured 47 % of
        options with twice the others' rate released when batches of 500 live
        runs were folded before their probes, and 10 % with a tenth of the
        probes lost).
        """
        return self.probe_runs >= self.probes_expected - 2.0 * math.sqrt(self.probes_expected)

    def record_no_harm(self, config: BanditConfig) -> None:
        """Note each metric whose no-harm test has reached ``1 / release_alpha``, when caught up."""
        if not self.probes_caught_up():
            return
        bar = math.log(1.0 / config.release_alpha)
        for metric, test in self.no_harm_tests.items():
            if -test.log_wealth[0] >= bar:
                self.shown_on.add(metric)

    def shown_no_worse(self) -> bool:
        """Whether, on every guardrail metric, it is shown no worse or nobody had an event.

        Shown no worse on a metric: its no-harm test's wealth against
        "``release_ratio`` times the others' rate" has reached
        ``1 / release_alpha`` (:meth:`BanditState.probe_status`). Each metric's
        test decides once: for a metric on which the option has that much more
        harm, the chance it ever does is at most ``release_alpha``, so waiting
        for the last metric does not need the first to stay above the bar.
        A metric on which no compared run had an event since the probing
        (re)started, and none of the option's probed runs ever, passes: that
        bounds its rate in absolute terms only (about 3 / ``probe_runs``), not
        against the others'; a review measured that passing on "none of the
        option's own" alone released 22 % of options with twice the others'
        rate at a base rate of 0.5 %.
        """
        decided = all(metric in self.shown_on for metric in self.no_harm_tests)
        return decided and all(
            test.trials["candidate"] == 0 or metric in self.shown_on
            for metric, test in self.probe_tests.items()
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for a table value."""
        return {
            "weight": self.weight,
            "weight2": self.weight2,
            "mean": self.mean,
            "m2": self.m2,
            "runs": self.runs,
            "guardrails": {m: g.to_dict() for m, g in self.guardrails.items()},
            "zeros": self.zeros,
            "log_weight": self.log_weight,
            "log_mean": self.log_mean,
            "log_m2": self.log_m2,
            "fresh": self.fresh,
            "changes": self.changes,
            "cusum": list(self.cusum),
            "released": self.released,
            "probe_runs": self.probe_runs,
            "probe_tests": {m: g.to_dict() for m, g in self.probe_tests.items()},
            "no_harm_tests": {m: g.to_dict() for m, g in self.no_harm_tests.items()},
            "shown_on": sorted(self.shown_on),
            "probes_expected": self.probes_expected,
            "probed": self.probed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OptionStats:
        """Rebuild from :meth:`to_dict` output (a value written before the hurdle parts too)."""
        stats = cls(
            weight=float(data["weight"]),
            # Before it was kept: as if undiscounted, which overstates the rates' noise.
            weight2=float(data.get("weight2", data["weight"])),
            mean=float(data["mean"]),
            m2=float(data["m2"]),
            runs=int(data["runs"]),
            guardrails={
                m: EventGuardrail.from_dict(g) for m, g in (data.get("guardrails") or {}).items()
            },
            zeros=float(data.get("zeros", 0.0)),
            log_weight=float(data.get("log_weight", 0.0)),
            log_mean=float(data.get("log_mean", 0.0)),
            log_m2=float(data.get("log_m2", 0.0)),
            fresh=int(data.get("fresh", data["runs"])),
            changes=int(data.get("changes", 0)),
            cusum=[float(c) for c in data.get("cusum") or [0.0, 0.0, 0.0, 0.0]],
            released=bool(data.get("released", False)),
            probe_runs=int(data.get("probe_runs", 0)),
            probe_tests={
                m: EventGuardrail.from_dict(g) for m, g in (data.get("probe_tests") or {}).items()
            },
            no_harm_tests={
                m: EventGuardrail.from_dict(g) for m, g in (data.get("no_harm_tests") or {}).items()
            },
            shown_on={str(m) for m in data.get("shown_on") or []},
            probes_expected=float(data.get("probes_expected", 0.0)),
            probed=bool(data.get("probed", int(data.get("probe_runs", 0)) > 0)),
        )
        if "no_harm_tests" not in data and not stats.released:
            # Written before the no-harm tests: its probes showed absence of harm at most, so
            # it is probed again from none (a review saw such a book release at its first look).
            stats.probe_runs = 0
        return stats


@dataclass
class BanditState:
    """The statistics of every declared option of one (doer, phase, parameter).

    ``baseline`` is the policy's default option, the first declared: the one
    safe exploration measures the others' guardrail events against.
    """

    options: dict[str, OptionStats]
    baseline: str = ""

    def __post_init__(self) -> None:
        if not self.baseline:
            self.baseline = next(iter(self.options))
        if self.baseline not in self.options:
            raise ValueError(f"baseline {self.baseline!r} is not one of {sorted(self.options)}")

    @classmethod
    def for_options(cls, options: Sequence[str]) -> BanditState:
        """Empty statistics of the options (at least two, none twice); the first is the baseline."""
        if len(options) < 2 or len(set(options)) != len(options):
            raise ValueError(f"options {list(options)} must be at least two distinct names")
        return cls(options={o: OptionStats() for o in options}, baseline=options[0])

    def pooled_log_var(self) -> float:
        """The pooled within-option variance of ``log(loss)`` over positive runs (1 before any)."""
        dof = sum(max(s.log_weight - 1.0, 0.0) for s in self.options.values())
        return sum(s.log_m2 for s in self.options.values()) / dof if dof > 0 else 1.0

    def observe(
        self,
        option: str,
        loss: float,
        shares: Mapping[str, float],
        *,
        events: Mapping[str, int] | None = None,
        config: BanditConfig | None = None,
        discount: float | None = None,
        probe_share: float = 0.0,
        probing: Collection[str] = (),
        counted: bool = True,
    ) -> None:
        """Fold one run of ``option`` in: discount, detect a change, add the loss, test the counts.

        ``shares`` is the allocation in force when the run was routed; ``events``
        maps a guardrail metric to the run's count of it; ``discount`` overrides
        ``config.discount``; ``probe_share`` is the share of tasks on which the
        options ``probing`` were to be probed when the run was routed: its
        events go to their probe tests (:meth:`observe_probe`), as the control,
        or as the candidate when the run is of the probed option itself.
        ``counted``: whether the probes the run's task asked for count toward
        the probes expected (:meth:`OptionStats.probes_caught_up`); not for a
        run that names no allocation, whose router may have had none to ask by.
        A change the option's detector signals restarts its loss statistics
        before this run is added (its first of the new regime).
        """
        if option not in self.options:
            raise ValueError(f"option {option!r} is not one of {sorted(self.options)}")
        config = config or BanditConfig()
        factor = config.discount if discount is None else discount
        for stats in self.options.values():
            stats.decay(factor)
        stats = self.options[option]
        if (
            math.isfinite(loss)
            and loss >= 0
            and stats.changed(loss, math.sqrt(self.pooled_log_var()), config)
        ):
            stats.restart()
        stats.add(loss)
        if probe_share > 0 and counted:
            for name in probing:
                if name in self.options:
                    self.options[name].probes_expected += probe_share
        for metric, count in (events or {}).items():
            if count <= 0:
                continue
            for name, other in self.options.items():
                test = other.guardrails.setdefault(metric, EventGuardrail())
                arm = "candidate" if name == option else "control"
                test.add(arm, int(count), float(shares.get(name, 0.0)))
                if name in probing and probe_share > 0:
                    # The probed option's own live runs are its runs too: a candidate trial.
                    share = probed(probe_share, shares, name)
                    other.add_probed(metric, arm, int(count), share, config)
        self.review(config)

    def review(self, config: BanditConfig) -> None:
        """Review every option but the baseline for release from probation, or recall."""
        for name, other in self.options.items():
            if name != self.baseline:
                if not other.released:
                    other.record_no_harm(config)
                other.review_probation(config.probation_runs, self.probe_status(name, config))

    def observe_probe(
        self,
        option: str,
        events: Mapping[str, int],
        shares: Mapping[str, float],
        probe_share: float,
        config: BanditConfig | None = None,
    ) -> None:
        """Count one probe of ``option``: its guardrail events, for its probation only.

        A probe is a shadow run: the option executed beside the routed one on
        the same task, serving nobody, on ``probe_share`` of the tasks while
        ``shares`` were in force. It changes no loss statistics (shadow runs
        never move the allocation's estimates); what it shows is whether the
        option has security criticals or API breakages, without exposing
        anyone to them (:meth:`probe_status`).
        """
        if option not in self.options:
            raise ValueError(f"option {option!r} is not one of {sorted(self.options)}")
        if probe_share <= 0:
            return  # nobody asked for it: its events could not be tested, so it counts for nothing
        config = config or BanditConfig()
        stats = self.options[option]
        stats.probe_runs += 1
        stats.probed = True
        share = probed(probe_share, shares, option)
        for metric, count in events.items():
            if count > 0:
                stats.add_probed(metric, "candidate", int(count), share, config)
        self.review(config)

    def probe_status(self, option: str, config: BanditConfig) -> ProbeStatus:
        """What ``option``'s probes say about its probation.

        Each guardrail metric has a count test of the option's runs while it
        is probed — its probes and its own live runs — against the other
        options' live runs (``learning.event_guardrails``, the canary's test):
        a run with an event is one of the option's with the probability
        :func:`probed` if its runs have events at the others' rate.

        * ``"held"`` — a test crossed ``1/guardrail_alpha``: the option stays on
          probation for good and is not probed again;
        * ``"unexplained"`` — a test's current wealth is above 1 (its probes had
          events the others' rate does not explain yet): not released, probed on;
        * ``"cleared"`` — at least ``config.probe_runs`` probes, caught up with
          those asked for (:meth:`OptionStats.probes_caught_up`), nothing
          unexplained, and on every metric evidence that it has fewer than
          ``config.release_ratio`` times the others' events, or no event of
          any compared run (:meth:`OptionStats.shown_no_worse`): released;
        * ``"undecided"`` — enough probes, nothing unexplained, but that
          evidence not yet: not released, probed on;
        * ``"open"`` — fewer probes, nothing unexplained: probed on.

        The evidence of no harm is the likelihood ratio of "the others' rate"
        against "``release_ratio`` times it" on the same trials (a test
        martingale under any ratio at or above ``release_ratio``, by the
        monotone likelihood ratio): an option with that much more harm is
        released with probability at most ``release_alpha``, however long it is
        probed. A clearing on "nothing unexplained" alone (absence of evidence
        of harm) let options with two or three times the others' rate leave the
        floor on about half the seeds (docs/bandits.md, *Probes*).

        The tests are anytime-valid (Ville's inequality), so probing as long as
        it takes does not raise the chance of holding an option that is no worse.
        """
        stats = self.options[option]
        tests = stats.probe_tests.values()
        if any(t.harmful(config.guardrail_alpha) for t in tests):
            return "held"
        if any(t.log_mixture > 0.0 for t in tests):
            return "unexplained"
        if stats.probe_runs < config.probe_runs:
            return "open"
        return "cleared" if stats.probes_caught_up() and stats.shown_no_worse() else "undecided"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for a table value."""
        return {
            "options": {o: s.to_dict() for o, s in self.options.items()},
            "baseline": self.baseline,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BanditState:
        """Rebuild from :meth:`to_dict` output (without a baseline: the first option)."""
        options = {o: OptionStats.from_dict(s) for o, s in data["options"].items()}
        return cls(options=options, baseline=str(data.get("baseline") or ""))


@dataclass(frozen=True)
class Allocation:
    """Shares to route by, each option's P(best), the excluded options and the verdict.

    ``best`` is the competing option with the highest P(best); ``confident`` is
    the "one option is best" rule of :class:`BanditConfig`; ``probation`` the
    options held at the floor until their guardrail events are shown no worse
    than the other options' (at the shares in force); ``model`` the model of
    the mean the draws came from; ``probes`` the options on probation that are
    not held (:meth:`BanditState.probe_status`): the ones worth running in
    shadow beside the routed option (``ParameterAllocation.probes``).
    """

    shares: dict[str, float]
    p_best: dict[str, float]
    excluded: dict[str, str]
    best: str | None
    confident: bool
    probation: tuple[str, ...] = ()
    model: str = "normal"
    probes: tuple[str, ...] = ()


def probed(probe_share: float, shares: Mapping[str, float], option: str) -> float:
    """The share of the runs compared in ``option``'s probe tests that are its own runs.

    Per task, ``option`` is probed with probability ``probe_share``, runs live
    with probability ``share(option)``, and the other options run live with
    probability ``1 − share(option)``: if the option's runs (probes and live)
    have events at the others' rate, a run with an event is one of the option's
    with probability ``(probe_share + share) / (probe_share + 1)``.
    """
    own = float(shares.get(option, 0.0))
    return (probe_share + own) / (probe_share + 1.0) if probe_share > 0 else 0.0


def normal_draws(
    state: BanditState, names: Sequence[str], config: BanditConfig, rng: np.random.Generator
) -> np.ndarray:
    """Draws of each named option's mean loss by the normal model, shape (draws, len(names))."""
    stats = [state.options[n] for n in names]
    total_weight = sum(s.weight for s in stats)
    pooled_mean = sum(s.weight * s.mean for s in stats) / total_weight if total_weight else 0.0
    dof = sum(max(s.weight - 1.0, 0.0) for s in stats)
    pooled_var = sum(s.m2 for s in stats) / dof if dof > 0 else 0.0
    if pooled_var <= 0.0:
        # No spread seen yet: let the prior be as wide as the losses' scale.
        pooled_var = max(pooled_mean, 1.0) ** 2
    draws = np.empty((config.draws, len(stats)))
    for j, s in enumerate(stats):
        n = s.weight + config.prior_weight
        centre = (s.weight * s.mean + config.prior_weight * pooled_mean) / n
        var = (s.m2 + config.variance_prior_weight * pooled_var) / (
            max(s.weight - 1.0, 0.0) + config.variance_prior_weight
        )
        scale = math.sqrt(var / n)
        nu = max(s.weight - 1.0, 1.0)
        draws[:, j] = centre + scale * rng.standard_t(nu, size=config.draws)
    return draws


def hurdle_draws(
    state: BanditState, names: Sequence[str], config: BanditConfig, rng: np.random.Generator
) -> np.ndarray:
    """Draws of each named option's mean loss by the hurdle model, shape (draws, len(names)).

    mean = P(loss > 0) · E[loss | loss > 0], with P(loss > 0) from a Beta posterior
    and the positive part lognormal: ``exp(μ + σ²/2)`` with ``(μ, σ²)`` from the
    normal-inverse-χ² posterior of the logs. Both are shrunk to the pooled values
    of the named options (``variance_prior_weight`` pseudo-runs for the rate and
    ``σ²``, ``prior_weight`` for ``μ``), so an option with few runs is as
    uncertain as the losses' spread says: twenty zeros of a loss that is zero on
    90 % of runs are not evidence of a rate near 0.
    """
    stats = [state.options[n] for n in names]
    total = sum(s.weight for s in stats)
    rate = sum(s.weight - s.zeros for s in stats) / total if total > 0 else 0.5
    rate = min(max(rate, 0.01), 0.99)
    log_total = sum(s.log_weight for s in stats)
    log_centre = sum(s.log_weight * s.log_mean for s in stats) / log_total if log_total else 0.0
    log_var = state.pooled_log_var() if log_total else 1.0
    n0, v0 = config.prior_weight, config.variance_prior_weight
    r0 = rate_prior(stats, rate, config)
    draws = np.empty((config.draws, len(stats)))
    for j, s in enumerate(stats):
        positive = max(s.weight - s.zeros, 0.0)
        p = rng.beta(positive + r0 * rate, s.zeros + r0 * (1.0 - rate), size=config.draws)
        dof = max(s.log_weight - 1.0, 0.0) + v0
        scale = (s.log_m2 + v0 * log_var) / dof
        sigma2 = dof * scale / rng.chisquare(dof, size=config.draws)
        n = s.log_weight + n0
        centre = (s.log_weight * s.log_mean + n0 * log_centre) / n
        mu = centre + np.sqrt(sigma2 / n) * rng.standard_normal(config.draws)
        draws[:, j] = p * np.exp(mu + sigma2 / 2.0)
    return draws


def rate_prior(stats: Sequence[OptionStats], rate: float, config: BanditConfig) -> float:
    """Pseudo-runs at the pooled ``rate`` of positive losses for each option's Beta posterior.

    Empirical Bayes for a beta-binomial (the moment estimator of the between-option
    variance of the rates, as in DerSimonian & Laird 1986), over the options with
    runs: ``τ²`` is their weighted spread of rates beyond what sampling noise at the
    pooled rate explains, the noise of a discounted option's rate being
    ``rate(1 − rate) · Σw²/(Σw)²`` (its effective run count, not its weight). The
    Beta prior with that variance about ``rate`` has ``rate(1 − rate)/τ² − 1``
    pseudo-runs: at least ``rate_prior_weight``, and ``RATE_PRIOR_CAP`` when the
    spread is within the noise (the rates look equal: the draws then rank the
    options by their positive losses alone; capping at the options' own runs
    instead measured worse, 0.35 of uniform's regret against 0.32 on the
    zero-heavy loss, and a proposal also needs the sample mean's model to agree).
    With ``rate_pooling`` off, ``rate_prior_weight``.
    """
    if not config.rate_pooling:
        return config.rate_prior_weight
    seen = [s for s in stats if s.weight > 0]
    total = sum(s.weight for s in seen)
    if len(seen) < 2 or total <= 0:
        return config.rate_prior_weight
    weights = np.array([s.weight for s in seen])
    rates = np.array([(s.weight - s.zeros) / s.weight for s in seen])
    # Each option's rate noise times its weight: rate(1 − rate) · Σw²/Σw.
    noise = rate * (1 - rate) * np.array([s.weight2 / s.weight for s in seen])
    spread = float((weights * (rates - rate) ** 2).sum() - (noise * (1 - weights / total)).sum())
    denominator = total - float((weights**2).sum()) / total
    tau2 = spread / denominator if denominator > 0 else 0.0
    if tau2 <= 0:
        return RATE_PRIOR_CAP
    pseudo = rate * (1 - rate) / tau2 - 1.0
    return float(min(max(pseudo, config.rate_prior_weight), RATE_PRIOR_CAP))


def model_for(state: BanditState, names: Sequence[str], config: BanditConfig) -> str:
    """The model of the mean to draw from: the configured one, normal if the hurdle misfits.

    The hurdle model is used while no named option's positive losses are more
    than ``misfit_z`` standard errors from their lognormal mean
    (:meth:`OptionStats.misfit`); otherwise the sample mean's normal model, as
    for statistics folded in before the hurdle parts existed (an option whose
    positive runs are not all in its log moments).
    """
    if config.model != "hurdle":
        return "normal"
    stats = [state.options[n] for n in names]
    if any(abs(s.weight - s.zeros - s.log_weight) > 0.5 for s in stats):
        return "normal"  # a book written before the hurdle statistics: they are not complete
    log_var = state.pooled_log_var()
    if any(state.options[n].misfit(log_var) > config.misfit_z for n in names):
        return "normal"
    return "hurdle"


def posterior_draws(
    state: BanditState, names: Sequence[str], config: BanditConfig, rng: np.random.Generator
) -> np.ndarray:
    """Draws of each named option's mean loss, shape (draws, len(names)), by :func:`model_for`."""
    if model_for(state, names, config) == "hurdle":
        return hurdle_draws(state, names, config, rng)
    return normal_draws(state, names, config, rng)


def tempered(draws: np.ndarray, temper: float) -> np.ndarray:
    """The draws' spread about each option's median scaled by ``temper`` (below 1: greedier)."""
    if temper == 1.0:
        return draws
    centre = np.median(draws, axis=0)
    return centre + temper * (draws - centre)


def _p_best(draws: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Share of draws in which each option has the lowest mean."""
    wins = np.bincount(draws.argmin(axis=1), minlength=len(names))
    return {n: float(w) / draws.shape[0] for n, w in zip(names, wins, strict=True)}


def option_floor(config: BanditConfig, options: int) -> float:
    """Each option's exploration floor: ``min_share``, or less when the options are many.

    At most half the traffic goes to floors, so a policy declaring more than
    ``1 / (2 · min_share)`` options (25 at the default 0.02) still leaves the
    bandit half its traffic to move, instead of failing every allocation (or,
    at exactly ``1 / min_share``, never moving any).
    """
    return min(config.min_share, 0.5 / options)


def allocate(state: BanditState, config: BanditConfig, rng: np.random.Generator) -> Allocation:
    """Shares = P(best) among the competing options, floored at ``min_share``.

    Competing: not excluded by a guardrail, and the baseline or off probation
    (:meth:`OptionStats.review_probation`). The others get exactly the floor.
    The shares come from the draws tempered by ``config.temper`` (Chapelle & Li,
    "An empirical evaluation of Thompson sampling", 2011: a posterior scaled
    below 1 lowers the regret at these horizons); ``Allocation.p_best`` and the
    "one option is best" rule come from the untempered draws, so tempering never
    makes the bandit more sure of a proposal.
    """
    names = list(state.options)
    k = len(names)
    floor = option_floor(config, k)
    excluded = {}
    for name, stats in state.options.items():
        metric = stats.harmful(config.guardrail_alpha)
        if metric is not None:
            excluded[name] = f"{metric} worse than the other options"
    # Exclusion is "worse than the others": if every option is, none is preferred.
    eligible = [n for n in names if n not in excluded] or names
    probation = tuple(
        n
        for n in eligible
        if config.probation_runs > 0
        and n != state.baseline
        and not (
            state.options[n].released
            or state.options[n].releasable(config.probation_runs, state.probe_status(n, config))
        )
    )
    competing = [n for n in eligible if n not in probation] or eligible
    p_best = dict.fromkeys(names, 0.0)
    weights = dict.fromkeys(names, 0.0)
    model = model_for(state, competing, config)
    if len(competing) == 1:
        p_best[competing[0]] = weights[competing[0]] = 1.0
    else:
        draws = posterior_draws(state, competing, config, rng)
        p_best.update(_p_best(draws, competing))
        weights.update(_p_best(tempered(draws, config.temper), competing))
    free = 1.0 - k * floor
    shares = {n: floor + free * weights[n] for n in names}
    best = max(competing, key=lambda n: p_best[n])
    others = [n for n in eligible if n != best]
    confident = (
        p_best[best] >= config.level
        and state.options[best].fresh >= config.min_runs
        and all(state.options[n].fresh >= config.min_runs_other for n in others)
        and not probation
    )
    if confident and model == "hurdle":
        # The canary tests the sample mean: propose only what its model is as sure of.
        normal = _p_best(normal_draws(state, competing, config, rng), competing)
        confident = normal[best] >= config.level
    probes = tuple(n for n in probation if state.probe_status(n, config) != "held")
    return Allocation(shares, p_best, excluded, best, confident, probation, model, probes)
