"""BayesAgg rejects bad input with an error naming the task group and the step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesagg import BayesAgg, Binary, Multiclass, Regression

D = 4
GROUPS = (Regression("age", outputs=1), Binary("attrs", outputs=2), Multiclass("race", classes=3))


def _setup(b=5):
    torch.manual_seed(0)
    heads = nn.ModuleList([nn.Linear(D, 1), nn.Linear(D, 2), nn.Linear(D, 3)])
    h = torch.randn(b, D, requires_grad=True)
    targets = [torch.randn(b, 1), torch.randint(0, 2, (b, 2)).float(), torch.randint(0, 3, (b,))]
    return BayesAgg.paper(GROUPS), h, heads, targets


def test_valid_input_passes_and_counts_steps():
    agg, h, heads, targets = _setup()
    agg.backward(h, heads, targets)
    agg.backward(h.detach().requires_grad_(True), heads, targets)
    assert agg.step == 2


def test_nan_in_h_names_the_representation_and_step():
    agg, h, heads, targets = _setup()
    agg.backward(h, heads, targets)
    bad = h.detach().clone()
    bad[1, 2] = float("nan")
    with pytest.raises(FloatingPointError, match=r"step 1 \(epoch 0\).*representation h"):
        agg.backward(bad.requires_grad_(True), heads, targets)


@pytest.mark.parametrize(("index", "name"), [(0, "age"), (1, "attrs")])
def test_nan_or_inf_in_targets_names_the_group(index, name):
    agg, h, heads, targets = _setup()
    targets[index] = targets[index].clone()
    targets[index][0, 0] = float("inf") if index == 0 else float("nan")
    with pytest.raises(FloatingPointError, match=rf"step 0.*'{name}'.*targets"):
        agg.backward(h, heads, targets)


def test_inf_in_head_weights_names_the_group():
    agg, h, heads, targets = _setup()
    with torch.no_grad():
        heads[2].weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"step 0.*'race'.*head weight"):
        agg.backward(h, heads, targets)


def test_nan_during_warmup_is_caught_too():
    _, h, heads, targets = _setup()
    agg = BayesAgg.paper(GROUPS, warmup_epochs=1)
    with torch.no_grad():
        heads[0].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"'age'.*head bias"):
        agg.backward(h, heads, targets)


def test_class_ids_out_of_range():
    agg, h, heads, targets = _setup()
    targets[2] = torch.tensor([0, 1, 3, 0, 2])
    with pytest.raises(ValueError, match=r"'race'.*class ids must be in \[0, 3\)"):
        agg.backward(h, heads, targets)
    targets[2] = torch.tensor([0, -1, 2, 0, 2])
    with pytest.raises(ValueError, match="class ids"):
        agg.backward(h, heads, targets)


def test_float_class_ids_are_rejected():
    agg, h, heads, targets = _setup()
    targets[2] = targets[2].float()
    with pytest.raises(ValueError, match=r"'race'.*integers"):
        agg.backward(h, heads, targets)


def test_non_binary_targets_for_binary_tasks():
    agg, h, heads, targets = _setup()
    targets[1] = targets[1].clone()
    targets[1][3, 1] = 0.5
    with pytest.raises(ValueError, match=r"'attrs'.*0 or 1"):
        agg.backward(h, heads, targets)


def test_empty_batch():
    agg, _, heads, _ = _setup()
    h = torch.zeros(0, D, requires_grad=True)
    targets = [torch.zeros(0, 1), torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)]
    with pytest.raises(ValueError, match="empty batch"):
        agg.backward(h, heads, targets)


@pytest.mark.parametrize(
    ("index", "shape", "name"),
    [(0, (5,), "age"), (0, (5, 2), "age"), (1, (4, 2), "attrs"), (2, (5, 1), "race")],
)
def test_wrong_target_shapes(index, shape, name):
    agg, h, heads, targets = _setup()
    targets[index] = torch.zeros(shape, dtype=targets[index].dtype)
    with pytest.raises(ValueError, match=rf"'{name}'.*shape"):
        agg.backward(h, heads, targets)


def test_wrong_h_shape_and_detached_h():
    agg, h, heads, targets = _setup()
    with pytest.raises(ValueError, match=r"shape \[B, D\]"):
        agg.backward(h.reshape(-1), heads, targets)
    with pytest.raises(ValueError, match="does not require grad"):
        agg.backward(h.detach(), heads, targets)


def test_mismatch_between_groups_and_heads_or_targets():
    agg, h, heads, targets = _setup()
    with pytest.raises(ValueError, match="2 heads for 3 task groups"):
        agg.backward(h, heads[:2], targets)
    with pytest.raises(ValueError, match="2 targets for 3 task groups"):
        agg.backward(h, heads, targets[:2])
    wrong = nn.ModuleList([heads[0], nn.Linear(D, 3), heads[2]])
    with pytest.raises(ValueError, match=r"'attrs': head has 3 outputs, the group needs 2"):
        agg.backward(h, wrong, targets)
    wrong = nn.ModuleList([nn.Linear(D + 1, 1), heads[1], heads[2]])
    with pytest.raises(ValueError, match=r"'age': head takes 5 features, h has 4"):
        agg.backward(h, wrong, targets)
    wrong = nn.ModuleList([heads[0], heads[1], nn.Sequential(nn.Linear(D, 3))])
    with pytest.raises(TypeError, match=r"'race'.*nn.Linear"):
        agg.backward(h, wrong, targets)


def test_classification_head_without_bias_is_rejected():
    agg, h, heads, targets = _setup()
    wrong = nn.ModuleList([heads[0], nn.Linear(D, 2, bias=False), heads[2]])
    with pytest.raises(ValueError, match=r"'attrs': classification heads need a bias"):
        agg.backward(h, wrong, targets)


def test_regression_head_may_change_bias_only_between_runs():
    _, h, heads, targets = _setup()
    agg = BayesAgg.paper(GROUPS, regression_bias=True)  # the head decides
    agg.backward(h, heads, targets)
    other = nn.ModuleList([nn.Linear(D, 1, bias=False), heads[1], heads[2]])
    with pytest.raises(ValueError, match=r"'age'.*bias"):
        agg.backward(h.detach().requires_grad_(True), other, targets)


def test_end_epoch_without_heads_or_steps():
    agg, *_ = _setup()
    agg.end_epoch()  # no data: nothing to refit, the epoch still counts
    assert agg.epoch == 1 and agg.prior.posteriors == [None, None, None]
    with pytest.raises(ValueError, match="no Regression task group"):
        BayesAgg.paper([Binary("b", 2)]).fit_regression_heads([nn.Linear(D, 2)], [])
    with pytest.raises(ValueError, match="no batch"):
        agg.fit_regression_heads([nn.Linear(D, 1), nn.Linear(D, 2), nn.Linear(D, 3)], [])


def test_fit_regression_heads_rejects_infinite_targets():
    """An infinite target is an error; a NaN one is a missing label (tests of missing labels)."""
    agg, h, heads, targets = _setup()
    bad = targets[0].clone()
    bad[2, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"batch 0, task group 'age'.*infinit"):
        agg.fit_regression_heads(heads, [(h.detach(), [bad, None, None])])
    with pytest.raises(FloatingPointError, match=r"batch 1: h contains NaN"):
        agg.fit_regression_heads(
            heads,
            [
                (h.detach(), [targets[0], None, None]),
                (torch.full((2, D), float("inf")), [targets[0][:2], None, None]),
            ],
        )


def test_large_finite_values_are_not_mistaken_for_infinities():
    """The finiteness screen sums each tensor; a sum that overflows is re-checked exactly."""
    agg, h, heads, targets = _setup()
    big = torch.full((5, 1), 3e38)  # every entry finite, the float32 sum overflows
    checked_heads, checked, *_ = agg._check_step(h, heads, [big, targets[1], targets[2]])
    assert torch.equal(checked[0], big) and len(checked_heads) == 3
    with pytest.raises(FloatingPointError, match="'age': targets contain NaN"):
        agg._check_step(h, heads, [torch.full((5, 1), float("-inf")), *targets[1:]])
