"""Task groups: sizes, names, losses and declaration errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bayesagg.tasks import (
    Binary,
    Multiclass,
    Regression,
    check_groups,
    num_tasks,
    task_kinds,
    task_losses,
    task_names,
)

GROUPS = (Regression("age"), Binary("attr", 3), Multiclass("ethnicity", 5))


def test_sizes_names_and_kinds() -> None:
    assert num_tasks(GROUPS) == 1 + 3 + 1
    assert task_names(GROUPS) == ["age", "attr[0]", "attr[1]", "attr[2]", "ethnicity"]
    assert task_kinds(GROUPS) == ["regression", "binary", "binary", "binary", "multiclass"]
    labelled = Regression("qm9", 2, labels=("mu", "alpha"))
    assert task_names([labelled]) == ["mu", "alpha"]


def test_losses_match_torch_functional() -> None:
    g = torch.Generator().manual_seed(0)
    pred = [
        torch.randn(6, 1, generator=g),
        torch.randn(6, 3, generator=g),
        torch.randn(6, 5, generator=g),
    ]
    tgt = [
        torch.randn(6, 1, generator=g),
        torch.randint(0, 2, (6, 3), generator=g).float(),
        torch.randint(0, 5, (6,), generator=g),
    ]
    losses = task_losses(GROUPS, pred, tgt)
    assert losses.shape == (5,)
    torch.testing.assert_close(losses[0], F.mse_loss(pred[0], tgt[0]))
    for k in range(3):
        torch.testing.assert_close(
            losses[1 + k], F.binary_cross_entropy_with_logits(pred[1][:, k], tgt[1][:, k])
        )
    torch.testing.assert_close(losses[4], F.cross_entropy(pred[2], tgt[2]))
    # Per-example losses average to the task losses.
    for grp, p, t, sl in zip(
        GROUPS, pred, tgt, (slice(0, 1), slice(1, 4), slice(4, 5)), strict=True
    ):
        torch.testing.assert_close(grp.example_losses(p, t).mean(0), losses[sl])


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ((), "no task groups"),
        ((Regression("a"), Binary("a")), "declared twice"),
        ((Multiclass("c", 1),), "size 1 < 2"),
        ((Binary("b", 0),), "size 0 < 1"),
        ((Regression("r", 2, labels=("x",)),), "1 labels for 2 tasks"),
        (("not a group",), "is not a Regression"),
    ],
)
def test_bad_declarations(groups, message) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        check_groups(groups)


def test_mismatched_predictions() -> None:
    with pytest.raises(ValueError, match="3 task groups but 2 predictions"):
        task_losses(GROUPS, [torch.zeros(1, 1)] * 2, [torch.zeros(1, 1)] * 3)
