"""Evaluation metrics of the benchmarks, Delta_m and mean rank.

Which metric each benchmark's tasks use, and Delta_m's definition: docs/benchmarks.md, "The
benchmarks" and "STL and Delta_m".

Metrics are keyed ``task/metric`` (e.g. ``"U0/mae"``, ``"gender/accuracy"``,
``"class[3]/auc"``); one-vs-rest benchmarks add ``"argmax/accuracy"``. AUC-ROC, calibration
error and accuracy come from torchmetrics, the Brier score from scikit-learn (imported when
used); only the two formulas of the papers, Delta_m and mean rank, are written here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from bayesagg.tasks import MISSING, Binary, Multiclass, Regression, TaskGroup, task_names

__all__ = [
    "ECE_BINS",
    "HIGHER_IS_BETTER",
    "delta_m",
    "evaluate",
    "higher_is_better",
    "mean_rank",
]

#: Metrics where a larger value is better; all others (mae, mse, error, ece, brier) are lower.
HIGHER_IS_BETTER = frozenset({"accuracy", "auc"})
#: Bins of the expected calibration error (BayesAgg-MTL App. C.1).
ECE_BINS = 15


def higher_is_better(key: str) -> bool:
    """Return True if a larger value of metric ``task/metric`` is better."""
    return key.rpartition("/")[2] in HIGHER_IS_BETTER


def _binary_auc(prob: Tensor, target: Tensor, task: str) -> float | None:
    """Return the AUC-ROC of one binary task, or None when the targets hold one class only."""
    from torchmetrics.functional.classification import binary_auroc

    positives = int(target.sum())
    if positives == 0 or positives == target.numel():
        warnings.warn(
            f"AUC of task {task!r} is undefined: its {target.numel()} targets are all "
            f"{'positive' if positives else 'negative'}; reported as null",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return float(binary_auroc(prob, target.long()))


def evaluate(
    groups: Sequence[TaskGroup],
    predictions: Sequence[Tensor],
    targets: Sequence[Tensor],
    *,
    regression_metric: Literal["mae", "mse"] = "mae",
    regression_scale: Sequence[float] | None = None,
    argmax_accuracy: bool = False,
    calibration: bool = False,
) -> dict[str, float | None]:
    """Return every metric of a split, keyed ``task/metric``, from the stacked outputs.

    ``predictions[g]`` are group g's head outputs over the whole split (regression values in
    original units, logits otherwise) and ``targets[g]`` its targets. Regression: MAE or MSE per
    output, times ``regression_scale`` (MSE times its square). Binary: accuracy (threshold 0.5),
    error, AUC-ROC. Multiclass: accuracy and error. With ``calibration``: top-label ECE (15 equal
    bins, L1; a binary task as two classes) and Brier score of every classification task
    (binary: mean (p - y)^2; multiclass: mean over examples of the summed squared errors). With ``argmax_accuracy``: the k-way accuracy of the
    argmax over all binary logits against the one positive label of each example.

    Missing labels (NaN regression targets, :data:`~bayesagg.tasks.MISSING` classification
    ones) are left out of their task's metrics; a task with no label in the split gets None.
    """
    from sklearn.metrics import brier_score_loss
    from torchmetrics.functional.classification import (
        binary_accuracy,
        multiclass_accuracy,
        multiclass_calibration_error,
    )

    if not (len(groups) == len(predictions) == len(targets)):
        raise ValueError(
            f"{len(groups)} task groups but {len(predictions)} predictions and "
            f"{len(targets)} targets"
        )
    names = iter(task_names(groups))
    out: dict[str, float | None] = {}
    offset = 0
    for g, pred, target in zip(groups, predictions, targets, strict=True):
        pred = pred.detach().double().cpu()
        target = target.detach().cpu()
        if isinstance(g, Regression):
            pred = pred.reshape(len(pred), g.outputs)
            target = target.double().reshape(len(target), g.outputs)
            diff = pred - target
            scale = torch.ones(g.outputs, dtype=torch.float64)
            if regression_scale is not None:
                scale = torch.as_tensor(
                    regression_scale[offset : offset + g.outputs], dtype=torch.float64
                )
            error = diff.abs() if regression_metric == "mae" else diff.pow(2)
            factor = scale if regression_metric == "mae" else scale.pow(2)
            missing = target.isnan()
            if bool(missing.any()):
                # Missing labels (NaN): each output's mean over the examples that have it;
                # an output with none in the split has no value (null).
                labelled = (~missing).sum(0)
                total = torch.where(missing, torch.zeros_like(error), error).sum(0)
                values = total / labelled.clamp_min(1) * factor
                pairs = zip(values.tolist(), labelled.tolist(), strict=True)
                per_output = [v if n else None for v, n in pairs]
            else:
                per_output = (error.mean(0) * factor).tolist()
            for v in per_output:
                out[f"{next(names)}/{regression_metric}"] = v
        elif isinstance(g, Binary):
            pred = pred.reshape(len(pred), g.outputs)
            target = target.reshape(len(target), g.outputs).long()
            prob = torch.sigmoid(pred)
            for o in range(g.outputs):
                name = next(names)
                p_o, t_o = _labelled(prob[:, o], target[:, o], target[:, o] != MISSING)
                if len(t_o) == 0:  # no label in the split: no value
                    keys = ("accuracy", "error", "auc", *(("ece", "brier") if calibration else ()))
                    out.update({f"{name}/{k}": None for k in keys})
                    continue
                acc = float(binary_accuracy(p_o, t_o))
                out[f"{name}/accuracy"] = acc
                out[f"{name}/error"] = 1.0 - acc
                out[f"{name}/auc"] = _binary_auc(p_o, t_o, name)
                if calibration:
                    # Top-label ECE (Guo et al. 2017), as for multiclass: the confidence of
                    # the predicted class, not the positive-class probability.
                    two = torch.stack([1 - p_o, p_o], dim=1)
                    out[f"{name}/ece"] = float(
                        multiclass_calibration_error(two, t_o, 2, n_bins=ECE_BINS)
                    )
                    out[f"{name}/brier"] = float(brier_score_loss(t_o.numpy(), p_o.numpy()))
        elif isinstance(g, Multiclass):
            name = next(names)
            target = target.reshape(-1).long()
            prob, target = _labelled(torch.softmax(pred, dim=1), target, target != MISSING)
            if len(target) == 0:  # no label in the split: no value
                keys = ("accuracy", "error", *(("ece", "brier") if calibration else ()))
                out.update({f"{name}/{k}": None for k in keys})
                offset += g.num_tasks
                continue
            acc = float(multiclass_accuracy(prob, target, g.classes, average="micro"))
            out[f"{name}/accuracy"] = acc
            out[f"{name}/error"] = 1.0 - acc
            if calibration:
                out[f"{name}/ece"] = float(
                    multiclass_calibration_error(prob, target, g.classes, n_bins=ECE_BINS)
                )
                out[f"{name}/brier"] = float(
                    brier_score_loss(target.numpy(), prob.numpy(), labels=list(range(g.classes)))
                )
        else:  # pragma: no cover - check_groups rejects these
            raise TypeError(f"unknown task group {g!r}")
        offset += g.num_tasks
    if argmax_accuracy:
        out["argmax/accuracy"] = _argmax_accuracy(groups, predictions, targets)
    return out


def _labelled(prob: Tensor, target: Tensor, labelled: Tensor) -> tuple[Tensor, Tensor]:
    """Return the rows of (prob, target) that have a label (all of them, as they are, if every
    row has one)."""
    if bool(labelled.all()):
        return prob, target
    return prob[labelled], target[labelled]


def _argmax_accuracy(
    groups: Sequence[TaskGroup], predictions: Sequence[Tensor], targets: Sequence[Tensor]
) -> float:
    """Return the accuracy of the argmax over all binary logits (one positive per example)."""
    from torchmetrics.functional.classification import multiclass_accuracy

    if not all(isinstance(g, Binary) for g in groups):
        raise ValueError("argmax accuracy needs binary task groups only (one-vs-rest tasks)")
    logits = torch.cat([p.detach().reshape(len(p), -1) for p in predictions], dim=1)
    onehot = torch.cat([t.detach().reshape(len(t), -1) for t in targets], dim=1)
    per_row = onehot.sum(1)
    if not bool((per_row == 1).all()):
        bad = int((per_row != 1).sum())
        raise ValueError(
            f"argmax accuracy needs exactly one positive task per example; {bad} examples differ"
        )
    return float(
        multiclass_accuracy(logits.cpu(), onehot.argmax(1).cpu(), logits.shape[1], average="micro")
    )


def delta_m(metrics: Mapping[str, float | None], references: Mapping[str, float]) -> float:
    """Return Delta_m % = (100/K) sum_k (-1)^delta_k (M_k - M_stl,k) / M_stl,k (lower is better).

    Navon et al. 2022 / BayesAgg-MTL Sec. 5: delta_k = 1 where higher is better. The K tasks are
    the keys of ``references``; each must be present (and not None) in ``metrics``.
    """
    if not references:
        raise ValueError("Delta_m needs at least one STL reference value")
    total = 0.0
    for key, ref in references.items():
        value = metrics.get(key)
        if value is None:
            raise KeyError(f"Delta_m: metric {key!r} is missing (has the reference the same task?)")
        if ref == 0 or not math.isfinite(ref):
            raise ValueError(f"Delta_m: STL reference of {key!r} is {ref}, cannot divide by it")
        sign = -1.0 if higher_is_better(key) else 1.0
        total += sign * (value - ref) / ref
    return 100.0 * total / len(references)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def mean_rank(
    table: Mapping[str, Mapping[str, float | None]], keys: Sequence[str]
) -> dict[str, float]:
    """Return each method's rank averaged over the metrics ``keys`` (1 = best; ties averaged).

    ``table[method][key]`` is the method's value of metric ``key``. A metric missing for any
    method, or not finite (a diverged run's NaN), is left out of every method's average, so all
    ranks use the same metrics and one bad run cannot make the others' ranks NaN; with no
    metric common to all methods the result is empty.
    """
    from scipy.stats import rankdata

    methods = list(table)
    usable = [k for k in keys if all(_finite(table[m].get(k)) for m in methods)]
    if not methods or not usable:
        return {}
    ranks = {m: 0.0 for m in methods}
    for key in usable:
        # ``usable`` holds only keys whose values are finite numbers for every method.
        values = [float(table[m][key]) for m in methods]  # type: ignore[arg-type]
        if higher_is_better(key):
            values = [-v for v in values]
        for m, r in zip(methods, rankdata(values, method="average"), strict=True):
            ranks[m] += float(r)
    return {m: ranks[m] / len(usable) for m in methods}
