"""The epoch-level prior of BayesAgg-MTL: last epoch's full-data posterior, refitted once per epoch.

Paper Section 3.1, "Prior selection" (and Section 3.2 for classification); docs/bayesagg-math.md,
"The epoch-level prior".
A batch posterior sees only B examples, so information about the whole training set enters
through its prior: during an epoch the features and targets of every step are collected; at the
end of the epoch the posterior of each head is fitted on all of them with the isotropic prior
N(0, gamma I), and that full-data posterior (mean and precision) is the prior of every batch
posterior in the next epoch. Before the first refit the prior is N(0, gamma I).

What is kept during an epoch (from ``h.detach()`` of every step, warm-up steps included):

- regression groups: only the sufficient statistics ``H~^T H~`` [P, P] and ``H~^T Y`` [P, O]
  (P = D, or D + 1 with a bias), summed batch by batch in float64: O(D^2) memory, and the
  full-data fit of Bayesian linear regression is exact from them. Once an output misses a
  label (NaN target) the group's statistics become per output, ``H_o~^T H_o~`` [O, P, P] with
  a count per output, each over the examples labelled for it, and so does its fit;
- classification groups (binary and multiclass): the epoch's features [N, D] and targets, because
  the Newton step of the full-data fit needs the predicted probabilities at the head *as it is at
  the end of the epoch* (as in the paper's code). That is N x D numbers per epoch, kept on the
  features' device in their dtype. Missing labels (-100) are kept too and left out of the fit.

The full-data fits run in float64 (``fit_dtype``); the fitted prior is cast once to the dtype and
device of the features that use it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from bayesagg import posterior
from bayesagg.evidence import EvidenceFit, maximise_evidence
from bayesagg.kronecker import KroneckerGaussian, KroneckerPrecision
from bayesagg.linalg import NumericalError, Reduce, augment, cholesky, summed_over_processes
from bayesagg.newton import check_newton, newton_posterior
from bayesagg.posterior import Gaussian
from bayesagg.tasks import MISSING, Binary, Multiclass, Regression, TaskGroup, check_groups

__all__ = [
    "KRON_MIN_CLASSES",
    "EpochPrior",
    "MulticlassPosterior",
    "RegressionPrior",
    "RegressionStatistics",
    "isotropic_prior",
]

#: How a multiclass head's posterior is stored: ``"dense"`` (the paper's (C P) x (C P)
#: precision), ``"kron"`` (Kronecker-factored, :mod:`bayesagg.kronecker`) or ``"auto"``
#: (factored for heads of at least :data:`KRON_MIN_CLASSES` classes, dense below).
MulticlassPosterior = Literal["auto", "dense", "kron"]

#: ``"auto"``'s size rule: the factored posterior from this many classes on. At two classes the
#: two forms cost the same (results/kron/cost_model.md) and the factored one was not tested in
#: training; from 5 and 10 classes on it trained no worse on held-out seeds (results/kron).
KRON_MIN_CLASSES = 3

#: How the full-data regression fit's prior and noise are set: ``"fixed"`` (the paper: prior
#: N(0, gamma I), noise variance ``noise_var``) or ``"evidence"`` (both chosen per group and
#: fit by maximising the marginal likelihood, :mod:`bayesagg.evidence`).
RegressionPrior = Literal["fixed", "evidence"]


def isotropic_prior(
    group: TaskGroup, num_params: int, gamma: float, *, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Return (mean, precision) of N(0, gamma I) for ``group`` in :mod:`bayesagg.posterior`'s layout.

    ``num_params`` is P, the weights per output (D, or D + 1 with a bias).
    """
    return posterior.isotropic_prior(
        group.kind, group.head_outputs, num_params, gamma, dtype=dtype, device=device
    )


class RegressionStatistics:
    """Streamed sufficient statistics of Bayesian linear regression: ``H~^T H~``, ``H~^T Y``,
    the per-output sums of squares ``y_o^T y_o`` (for the evidence, :mod:`bayesagg.evidence`)
    and N. Sums run in float64 so that 10^5 examples lose nothing; memory is O(P^2 + P O).

    Missing labels: the first batch with an unlabelled output (``update``'s ``labelled``)
    makes the statistics per output: ``hth`` [O, P, P] and ``labelled`` [O], the examples
    labelled for each output, each sum over its own rows (memory O(O P^2)). The fits are then
    per output too (one precision each, the evidence over the per-output counts).
    """

    def __init__(self, num_params: int, outputs: int, *, device: torch.device) -> None:
        self.hth = torch.zeros(num_params, num_params, dtype=torch.float64, device=device)
        self.hty = torch.zeros(num_params, outputs, dtype=torch.float64, device=device)
        self.yty = torch.zeros(outputs, dtype=torch.float64, device=device)
        #: Examples summed (a float once :meth:`scale` forgets some).
        self.count: float = 0
        #: Examples summed per output [O] (float64), once a label was missing; else None
        #: (every output has ``count``).
        self.labelled: Tensor | None = None

    @property
    def per_output(self) -> bool:
        """Return whether the statistics are per output (some output missed a label)."""
        return self.labelled is not None

    def split_outputs(self) -> None:
        """Make the statistics per output (each output's sums the shared ones so far)."""
        if self.labelled is None:
            outputs = self.hty.shape[1]
            self.hth = self.hth.expand(outputs, -1, -1).clone()
            self.labelled = torch.full(
                (outputs,), float(self.count), dtype=torch.float64, device=self.hth.device
            )

    def update(self, h: Tensor, y: Tensor, labelled: Tensor | None = None) -> None:
        """Add a batch: features h [B, P] (already with the bias column if any), targets y [B, O].

        ``labelled`` [B, O] (missing labels): output o's sums take only the rows where it is
        True (its other targets, NaN, are ignored); the statistics become per output.
        """
        if labelled is None and self.labelled is None:
            h64 = h.detach().to(torch.float64)
            y64 = y.detach().to(torch.float64)
            self.hth += h64.T @ h64
            self.hty += h64.T @ y64
            self.yty += y64.square().sum(0)
            self.count += h.shape[0]
            return
        if labelled is None:
            labelled = torch.ones(y.shape, dtype=torch.bool, device=y.device)
        self.split_outputs()
        assert self.labelled is not None  # split_outputs set it
        h64 = h.detach().to(torch.float64)
        y64 = torch.where(labelled, y.detach(), torch.zeros_like(y)).to(torch.float64)
        weight = labelled.to(torch.float64)  # [B, O]
        self.hth += (h64.T[None] * weight.T[:, None, :]) @ h64
        self.hty += h64.T @ y64
        self.yty += y64.square().sum(0)
        self.labelled += weight.sum(0)
        self.count += h.shape[0]

    def scale(self, factor: float) -> None:
        """Multiply every sum (and the count) by ``factor``: an exponential forgetting step."""
        self.hth *= factor
        self.hty *= factor
        self.yty *= factor
        self.count *= factor
        if self.labelled is not None:
            self.labelled *= factor

    def _agreed(self, reduce: Reduce | None) -> None:
        """Make the statistics per output if they are on any process (data parallelism).

        A process whose examples all had labels holds shared statistics, another per-output
        ones; the sums over processes need one layout. One more reduction, only under data
        parallelism.
        """
        if reduce is None:
            return
        flag = torch.tensor([float(self.per_output)], device=self.hty.device)
        if float(reduce(flag).item()) > 0:
            self.split_outputs()

    def fit(self, gamma: float, noise_var: float, reduce: Reduce | None = None) -> Gaussian:
        """Return the full-data posterior with the prior N(0, gamma I) (paper Eq. 2), float64.

        ``reduce`` (data parallelism): a sum over processes of the statistics before the fit.
        Per-output statistics give a per-output precision [O, P, P].
        """
        num_params, outputs = self.hty.shape
        self._agreed(reduce)
        hth, hty = summed_over_processes(reduce, self.hth, self.hty)
        prior_mean, prior_precision = posterior.isotropic_prior(
            "regression", outputs, num_params, gamma, dtype=torch.float64, device=self.hty.device
        )
        return posterior.regression_from_statistics(
            hth, hty, prior_mean, prior_precision, noise_var=noise_var
        )

    def fit_evidence(
        self,
        reduce: Reduce | None = None,
        *,
        initial: tuple[float, float] | None = None,
        where: str = "evidence",
    ) -> tuple[Gaussian, EvidenceFit]:
        """Return the full-data posterior at the evidence maximiser, and the maximiser.

        The prior N(0, I / alpha) and noise variance 1 / beta that maximise the marginal
        likelihood of all outputs (:func:`bayesagg.evidence.maximise_evidence`), float64.
        ``reduce`` sums the statistics over processes first; ``initial`` warm-starts the
        fixed point (e.g. from the previous epoch's maximiser).
        """
        num_params, outputs = self.hty.shape
        self._agreed(reduce)
        if self.labelled is not None:  # per output: each output's evidence with its own count
            hth, hty, yty, counts = summed_over_processes(
                reduce, self.hth, self.hty, self.yty, self.labelled
            )
            fit = maximise_evidence(hth, hty, yty, counts, initial=initial, where=where)
        else:
            count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.hty.device)
            hth, hty, yty, count = summed_over_processes(
                reduce, self.hth, self.hty, self.yty, count
            )
            fit = maximise_evidence(
                hth, hty, yty, float(count.item()), initial=initial, where=where
            )
        prior_mean, prior_precision = posterior.isotropic_prior(
            "regression",
            outputs,
            num_params,
            1.0 / fit.prior_precision,
            dtype=torch.float64,
            device=self.hty.device,
        )
        gaussian = posterior.regression_from_statistics(
            hth, hty, prior_mean, prior_precision, noise_var=1.0 / fit.noise_precision
        )
        return gaussian, fit

    def state_dict(self) -> dict[str, Any]:
        state = {
            "hth": self.hth.clone(),
            "hty": self.hty.clone(),
            "yty": self.yty.clone(),
            "count": self.count,
        }
        if self.labelled is not None:  # per-output statistics (missing labels)
            state["labelled"] = self.labelled.clone()
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RegressionStatistics:
        stats = cls(state["hth"].shape[-1], state["hty"].shape[1], device=state["hth"].device)
        stats.hth = state["hth"].clone()
        stats.hty = state["hty"].clone()
        if "yty" in state:  # checkpoints written before the evidence option have none
            stats.yty = state["yty"].clone()
        stats.count = state["count"]
        if state.get("labelled") is not None:
            stats.labelled = state["labelled"].clone()
        return stats


class EpochPrior:
    """Per-group prior of the batch posteriors, refitted on the whole epoch by :meth:`refit`.

    ``prior(i, ...)`` gives group ``i``'s current prior; ``accumulate`` collects a step's data;
    ``refit(heads)`` replaces the priors by the full-data posteriors and clears the buffers.
    """

    def __init__(
        self,
        groups: Sequence[TaskGroup],
        *,
        gamma: float,
        noise_var: float = 1.0,
        fit_dtype: torch.dtype = torch.float64,
        newton_steps: int = 1,
        newton_damping: float = 1.0,
        regression_prior: RegressionPrior = "fixed",
        refresh_every: int = 0,
        multiclass_posterior: MulticlassPosterior = "dense",
    ) -> None:
        check_groups(groups)
        if multiclass_posterior not in ("auto", "dense", "kron"):
            raise ValueError(
                "multiclass_posterior must be 'auto', 'dense' or 'kron', "
                f"got {multiclass_posterior!r}"
            )
        #: The multiclass groups' posterior form (:data:`MulticlassPosterior`).
        self.multiclass_posterior: MulticlassPosterior = multiclass_posterior
        if (
            isinstance(refresh_every, bool)
            or not isinstance(refresh_every, int)
            or refresh_every < 0
        ):
            raise ValueError(f"refresh_every must be an integer >= 0, got {refresh_every!r}")
        if regression_prior not in ("fixed", "evidence"):
            raise ValueError(
                f"regression_prior must be 'fixed' or 'evidence', got {regression_prior!r}"
            )
        if not gamma > 0:
            raise ValueError(f"prior variance gamma must be positive, got {gamma}")
        if not noise_var > 0:
            raise ValueError(f"noise variance must be positive, got {noise_var}")
        self.groups = tuple(groups)
        self.gamma = float(gamma)
        self.noise_var = float(noise_var)
        self.fit_dtype = fit_dtype
        #: Newton steps and step size of the classification fits (:mod:`bayesagg.newton`;
        #: the paper's is one undamped step).
        check_newton(newton_steps, newton_damping)
        self.newton_steps = int(newton_steps)
        self.newton_damping = float(newton_damping)
        self.regression_prior: RegressionPrior = regression_prior
        #: Regression priors are also refitted every ``refresh_every`` steps (0: only at the end
        #: of an epoch) from exponentially forgotten statistics of recent batches, whose
        #: effective size is the last epoch's number of examples (:meth:`refresh_regression`).
        self.refresh_every = refresh_every
        self._recent: list[RegressionStatistics | None] = [None] * len(groups)
        self._epoch_examples = 0
        #: The evidence maximiser of each regression group's last full-data fit
        #: (``regression_prior="evidence"``; None before the first refit and for other groups).
        self.evidence: list[EvidenceFit | None] = [None] * len(groups)
        #: Per group, how many fits found no finite evidence maximiser and used the fixed prior.
        self.evidence_fallbacks: list[int] = [0] * len(groups)
        #: Whether each group's head has a bias (fixed by the first batch); None until then.
        self.bias: list[bool] | None = None
        #: The full-data posterior of each group from the last refit (None: isotropic prior).
        self.posteriors: list[Gaussian | KroneckerGaussian | None] = [None] * len(self.groups)
        #: Number of refits done so far.
        self.refits = 0
        self._statistics: list[RegressionStatistics | None] = [None] * len(self.groups)
        self._features: list[Tensor] = []
        self._targets: list[list[Tensor]] = [[] for _ in self.groups]
        self._count = 0
        self._cast: dict[
            tuple[int, int, torch.dtype, torch.device], tuple[Tensor, Tensor | KroneckerPrecision]
        ] = {}
        #: Sum over processes of the refit's data statistics (data parallelism; set by BayesAgg).
        self.reduce: Reduce | None = None

    @property
    def num_examples(self) -> int:
        """Return the number of examples accumulated since the last refit."""
        return self._count

    def noise_variance(self, index: int) -> float:
        """Return the noise variance of group ``index``'s batch posteriors.

        ``noise_var``, or 1 / beta of the last evidence fit (``regression_prior="evidence"``):
        a batch posterior updates the full-data posterior with the same likelihood it was fitted
        with.
        """
        fit = self.evidence[index]
        return self.noise_var if fit is None else 1.0 / fit.noise_precision

    def prior_precision(self, index: int) -> float:
        """Return the precision of the isotropic prior of group ``index``'s last full-data fit."""
        fit = self.evidence[index]
        return 1.0 / self.gamma if fit is None else fit.prior_precision

    def check_bias(self, bias: Sequence[bool]) -> None:
        """Raise ``ValueError`` if a head gained or lost its bias since the first batch."""
        bias = [bool(b) for b in bias]
        if len(bias) != len(self.groups):
            raise ValueError(f"{len(bias)} bias flags for {len(self.groups)} task groups")
        if self.bias is None:
            self.bias = bias
        elif bias != self.bias:
            changed = [
                g.name for g, a, b in zip(self.groups, self.bias, bias, strict=True) if a != b
            ]
            raise ValueError(
                f"the head of task group(s) {changed} changed between having and not having a bias"
            )

    def accumulate(
        self,
        h: Tensor,
        targets: Sequence[Tensor],
        bias: Sequence[bool],
        labelled: Sequence[Tensor | None] | None = None,
    ) -> None:
        """Add one step's features h [B, D] and per-group targets to the epoch's buffers.

        ``labelled``: per group, the mask of its labelled targets, or None where every label is
        present (as :class:`~bayesagg.BayesAgg` finds them); by default found here from the
        targets (NaN regression targets, -100 classification targets are missing labels).
        """
        self.check_bias(bias)
        if labelled is None:
            labelled = [_labelled(group, y) for group, y in zip(self.groups, targets, strict=True)]
        h = h.detach()
        h_tilde = None
        needs_features = False
        for i, (group, y) in enumerate(zip(self.groups, targets, strict=True)):
            if isinstance(group, Regression):
                features = h
                if self.bias[i]:  # type: ignore[index]  # set by check_bias above
                    h_tilde = augment(h, True) if h_tilde is None else h_tilde
                    features = h_tilde
                if self._statistics[i] is None:
                    self._statistics[i] = RegressionStatistics(
                        features.shape[1], group.outputs, device=h.device
                    )
                self._statistics[i].update(features, y, labelled[i])  # type: ignore[union-attr]
                if self.refresh_every:
                    self._remember(i, group, features, y, labelled[i])
            else:
                needs_features = True
                self._targets[i].append(y.detach())
        if needs_features:
            self._features.append(h)
        self._count += h.shape[0]

    def _remember(
        self, index: int, group: Regression, features: Tensor, y: Tensor, labelled: Tensor | None
    ) -> None:
        """Add a batch to group ``index``'s recent statistics, forgetting old ones.

        Each batch of B examples multiplies the old sums by 1 - B / N (N: the last epoch's
        examples), so the sums weigh recent features most and hold about N examples, as much
        data as a full-data fit; before the first epoch ends nothing is forgotten.
        """
        recent = self._recent[index]
        if recent is None:
            recent = self._recent[index] = RegressionStatistics(
                features.shape[1], group.outputs, device=features.device
            )
        if self._epoch_examples:
            recent.scale(max(0.0, 1.0 - features.shape[0] / self._epoch_examples))
        recent.update(features, y, labelled)

    def refresh_regression(self) -> None:
        """Refit every regression group's prior on its recent statistics (``refresh_every``).

        The same fit as at the end of an epoch (prior N(0, gamma I), or the evidence maximiser),
        on the exponentially forgotten sums of :meth:`_remember` instead of the whole epoch's:
        the prior follows an encoder that moves during the epoch. Classification priors and
        the epoch's buffers are untouched.
        """
        for i, group in enumerate(self.groups):
            recent = self._recent[i]
            if not isinstance(group, Regression) or recent is None:
                continue
            fitted, evidence = self._fit_regression(i, recent, "refresh")
            self.posteriors[i] = fitted
            self.evidence[i] = evidence
        self._cast = {}

    def _fit_regression(
        self, index: int, stats: RegressionStatistics, what: str
    ) -> tuple[Gaussian, EvidenceFit | None]:
        """Return group ``index``'s fit on ``stats`` (fixed prior or evidence) and its evidence."""
        if self.regression_prior != "evidence":
            return stats.fit(self.gamma, self.noise_var, self.reduce), None
        last = self.evidence[index]
        try:
            return stats.fit_evidence(
                self.reduce,
                initial=None if last is None else (last.prior_precision, last.noise_precision),
                where=f"{what} of regression group {self.groups[index].name!r} "
                f"(after {self.refits} epoch fits)",
            )
        except NumericalError as err:
            # No finite maximiser (typically features of an untrained encoder that carry no
            # signal for the targets yet): this fit takes the fixed prior, said once per group,
            # and the next fit tries the evidence again. Fallbacks are counted.
            self.evidence_fallbacks[index] += 1
            if self.evidence_fallbacks[index] == 1:
                warnings.warn(
                    f"{err}. This fit uses the fixed prior N(0, gamma I) with noise variance "
                    f"noise_var instead (gamma {self.gamma:g}, noise_var {self.noise_var:g}); "
                    "later fits try the evidence again (counted in "
                    "EpochPrior.evidence_fallbacks)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return stats.fit(self.gamma, self.noise_var, self.reduce), None

    def kron(self, index: int) -> bool:
        """Return whether group ``index`` keeps a Kronecker-factored posterior."""
        group = self.groups[index]
        if not isinstance(group, Multiclass) or self.multiclass_posterior == "dense":
            return False
        return self.multiclass_posterior == "kron" or group.classes >= KRON_MIN_CLASSES

    def prior(
        self, index: int, num_params: int, *, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor | KroneckerPrecision]:
        """Return group ``index``'s prior (mean, precision) in ``dtype`` on ``device``.

        The precision is a :class:`~bayesagg.kronecker.KroneckerPrecision` for the multiclass
        groups of ``multiclass_posterior="kron"``, else a dense tensor.
        """
        key = (index, num_params, dtype, device)
        if key not in self._cast:
            fitted = self.posteriors[index]
            if fitted is None:
                self._cast[key] = self._isotropic(index, num_params, dtype, device)
            elif isinstance(fitted, KroneckerGaussian):
                self._cast[key] = (
                    fitted.mean.to(dtype=dtype, device=device),
                    fitted.precision.to(dtype, device),
                )
            else:
                if fitted.mean.shape[-1] != num_params:
                    raise ValueError(
                        f"task group {self.groups[index].name!r}: the prior has "
                        f"{fitted.mean.shape[-1]} weights per output, the head {num_params}"
                    )
                self._cast[key] = (
                    fitted.mean.to(dtype=dtype, device=device),
                    fitted.precision.to(dtype=dtype, device=device),
                )
        return self._cast[key]

    def _isotropic(
        self, index: int, num_params: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor | KroneckerPrecision]:
        """Return N(0, gamma I) for group ``index``, in its posterior's form."""
        group = self.groups[index]
        if self.kron(index):
            mean = torch.zeros(group.head_outputs, num_params, dtype=dtype, device=device)
            return mean, KroneckerPrecision.isotropic(
                group.head_outputs, num_params, self.gamma, dtype=dtype, device=device
            )
        return isotropic_prior(group, num_params, self.gamma, dtype=dtype, device=device)

    def refit(self, heads: Sequence[nn.Module] | None) -> None:
        """Replace every group's prior by its full-data posterior on this epoch, then clear.

        Regression: exact fit from the streamed statistics. Classification: one Newton step
        around the head's current weights and bias (paper Sec. 3.2), on the stored features,
        so ``heads`` must be the heads as they are now. With no example accumulated the priors
        stay as they are.
        """
        if self.num_examples == 0:
            self.clear()
            return
        new: list[Gaussian | KroneckerGaussian | None] = []
        evidence: list[EvidenceFit | None] = [None] * len(self.groups)
        features = None
        for i, group in enumerate(self.groups):
            if isinstance(group, Regression):
                stats = self._statistics[i]
                assert stats is not None  # accumulate() filled every regression group
                fitted, evidence[i] = self._fit_regression(i, stats, "full-data fit")
                new.append(fitted)
                continue
            if heads is None:
                raise ValueError(
                    f"refitting the prior of classification group {group.name!r} needs its head"
                )
            if features is None:
                features = torch.cat(self._features).to(self.fit_dtype)
            head = cast(nn.Linear, heads[i])  # a classification head is an nn.Linear
            weight = head.weight.detach().to(device=features.device, dtype=self.fit_dtype)
            bias = head.bias.detach().to(device=features.device, dtype=self.fit_dtype)
            y = torch.cat(self._targets[i])
            mean0, precision0 = self._isotropic(
                i, features.shape[1] + 1, self.fit_dtype, features.device
            )
            assert isinstance(group, (Binary, Multiclass))
            classified = newton_posterior(
                "kron" if self.kron(i) else group.kind,
                features,
                y.to(self.fit_dtype) if isinstance(group, Binary) else y,
                weight,
                bias,
                mean0,
                precision0,
                steps=self.newton_steps,
                damping=self.newton_damping,
                reduce=self.reduce,
                # The fit over the labelled rows only (the same sums over processes).
                labelled=_labelled(group, y),
            )
            new.append(classified)
        self.posteriors = new
        self.evidence = evidence
        self._epoch_examples = self.num_examples
        self.refits += 1
        self.clear()

    def clear(self) -> None:
        """Forget the epoch's buffers (not the fitted priors)."""
        self._statistics = [None] * len(self.groups)
        self._features = []
        self._targets = [[] for _ in self.groups]
        self._count = 0
        self._cast = {}

    def state_dict(self) -> dict[str, Any]:
        """Return the fitted priors and the buffers accumulated so far (tensors cloned)."""
        return {
            "gamma": self.gamma,
            "noise_var": self.noise_var,
            "regression_prior": self.regression_prior,
            "evidence": [None if e is None else dict(vars(e)) for e in self.evidence],
            "bias": None if self.bias is None else list(self.bias),
            "refits": self.refits,
            "posteriors": [_stored(p) for p in self.posteriors],
            "statistics": [None if s is None else s.state_dict() for s in self._statistics],
            "count": self._count,
            "recent": [None if r is None else r.state_dict() for r in self._recent],
            "epoch_examples": self._epoch_examples,
            "features": torch.cat(self._features) if self._features else None,
            "targets": [torch.cat(t) if t else None for t in self._targets],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if len(state["posteriors"]) != len(self.groups):
            raise ValueError(
                f"prior state has {len(state['posteriors'])} groups, this prior {len(self.groups)}"
            )
        self.gamma = float(state["gamma"])
        self.noise_var = float(state["noise_var"])
        self.regression_prior = state.get("regression_prior", "fixed")
        self.evidence = [
            None if e is None else EvidenceFit(**e)
            for e in state.get("evidence", [None] * len(self.groups))
        ]
        self.bias = None if state["bias"] is None else list(state["bias"])
        self.refits = int(state["refits"])
        self.posteriors = [_restored(p) for p in state["posteriors"]]
        self._statistics = [
            None if s is None else RegressionStatistics.from_state(s) for s in state["statistics"]
        ]
        self._features = [] if state["features"] is None else [state["features"].clone()]
        self._targets = [[] if t is None else [t.clone()] for t in state["targets"]]
        self._count = int(state["count"])
        self._recent = [
            None if r is None else RegressionStatistics.from_state(r)
            for r in state.get("recent", [None] * len(self.groups))
        ]
        self._epoch_examples = int(state.get("epoch_examples", 0))
        self._cast = {}


def _labelled(group: TaskGroup, y: Tensor) -> Tensor | None:
    """Return the mask of ``y``'s labelled targets for ``group``, or None if none is missing.

    A regression target is missing where NaN, a binary or multiclass one where -100
    (:mod:`bayesagg.tasks`).
    """
    labelled = ~torch.isnan(y) if isinstance(group, Regression) else y != MISSING
    return None if bool(labelled.all()) else labelled


def _stored(fitted: Gaussian | KroneckerGaussian | None) -> dict[str, Any] | None:
    """Return a fitted posterior as plain tensors and numbers (cloned) for a state dict."""
    if fitted is None:
        return None
    if isinstance(fitted, KroneckerGaussian):
        factors = fitted.precision
        return {
            "mean": fitted.mean.clone(),
            "classes": factors.classes.clone(),
            "features": factors.features.clone(),
            "count": factors.count,
            "tau": factors.tau,
        }
    return {"mean": fitted.mean.clone(), "precision": fitted.precision.clone()}


def _restored(state: dict[str, Any] | None) -> Gaussian | KroneckerGaussian | None:
    """Return the posterior :func:`_stored` saved (refactorised)."""
    if state is None:
        return None
    mean = state["mean"].clone()
    if "classes" in state:
        factors = KroneckerPrecision(
            state["classes"].clone(),
            state["features"].clone(),
            float(state["count"]),
            float(state["tau"]),
        )
        return KroneckerGaussian.decompose(mean, factors)
    precision = state["precision"].clone()
    return Gaussian(mean, precision, cholesky(precision, what="stored prior"))
