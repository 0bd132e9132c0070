"""The registry adapter BayesAggMTL follows the Method contract and delegates to BayesAgg."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesagg import BayesAgg, Binary, Multiclass, Regression, methods
from bayesagg.methods.bayesagg_mtl import BayesAggMTL
from bayesagg.tasks import task_losses

D = 4
GROUPS = (Regression("r", 2), Binary("b", 2), Multiclass("m", 3))


def _step_inputs(seed=0):
    torch.manual_seed(seed)
    heads = nn.ModuleList([nn.Linear(D, 2), nn.Linear(D, 2), nn.Linear(D, 3)])
    h = torch.randn(6, D, requires_grad=True)
    targets = [torch.randn(6, 2), torch.randint(0, 2, (6, 2)).float(), torch.randint(0, 3, (6,))]
    return heads, h, targets


def test_registry_creates_it():
    method = methods.create("bayesagg", num_tasks=5, groups=GROUPS, s_regression=0.75)
    assert isinstance(method, BayesAggMTL)
    assert method.name == "bayesagg" and method.space == "representation"
    assert method.aggregator.s_regression == 0.75
    assert "s_regression=0.75" in repr(method)


def test_num_tasks_must_match_the_groups():
    with pytest.raises(ValueError, match="num_tasks=4 but the task groups"):
        BayesAggMTL(4, groups=GROUPS)
    with pytest.raises(TypeError, match="bayesagg"):
        methods.create("bayesagg", num_tasks=5, groups=GROUPS, not_an_option=1)


def test_backward_delegates_to_bayesagg_and_records_weights():
    heads, h, targets = _step_inputs()
    method = BayesAggMTL(5, groups=GROUPS, gamma=0.1)
    losses = task_losses(GROUPS, [head(h) for head in heads], targets)
    method.backward(
        losses,
        shared_parameters=[],
        task_parameters=list(heads.parameters()),
        representation=h,
        heads=heads,
        targets=targets,
    )
    reference_heads, reference_h, _ = _step_inputs()
    BayesAgg(GROUPS, gamma=0.1).backward(reference_h, reference_heads, targets)
    torch.testing.assert_close(h.grad, reference_h.grad)
    assert method.last_weights is not None and method.last_weights.shape == (5,)


@pytest.mark.parametrize("missing", ["representation", "heads", "targets"])
def test_missing_inputs_are_named(missing):
    heads, h, targets = _step_inputs()
    kwargs = {"representation": h, "heads": heads, "targets": targets, missing: None}
    with pytest.raises(ValueError, match=f"missing: {missing}"):
        BayesAggMTL(5, groups=GROUPS).backward(torch.ones(5), shared_parameters=[], **kwargs)


def test_bad_losses_are_rejected():
    heads, h, targets = _step_inputs()
    with pytest.raises(ValueError, match="expected 5 task losses"):
        BayesAggMTL(5, groups=GROUPS).backward(
            torch.ones(4), shared_parameters=[], representation=h, heads=heads, targets=targets
        )


def test_end_epoch_state_dict_and_reset():
    heads, h, targets = _step_inputs()
    method = BayesAggMTL(5, groups=GROUPS, warmup_epochs=1)
    method.backward(
        torch.ones(5), shared_parameters=[], representation=h, heads=heads, targets=targets
    )
    method.end_epoch(torch.ones(5))
    assert method.aggregator.epoch == 1 and method.aggregator.prior.refits == 1
    state = method.state_dict()
    other = BayesAggMTL(5, groups=GROUPS, warmup_epochs=1)
    other.load_state_dict(state)
    assert other.aggregator.epoch == 1
    torch.testing.assert_close(
        other.aggregator.prior.posteriors[2].mean, method.aggregator.prior.posteriors[2].mean
    )
    method.reset()
    assert method.aggregator.epoch == 0 and method.last_weights is None


def test_library_defaults_and_the_published_variant():
    """The ablation's defaults: ``bayesagg`` = half-damped Newton fits and K-scaled gradient; ``bayesagg-paper``
    = the paper (one undamped Newton step, unscaled gradient), overridable like any default."""
    default = methods.create("bayesagg", num_tasks=5, groups=GROUPS).aggregator
    paper = methods.create("bayesagg-paper", num_tasks=5, groups=GROUPS).aggregator
    assert (default.newton_steps, default.newton_damping, default.scale_by_tasks) == (1, 0.5, True)
    assert (paper.newton_steps, paper.newton_damping, paper.scale_by_tasks) == (1, 1.0, False)
    assert (paper.prior_mean, paper.classification_heads) == ("full_data", "trained")
    assert (default.prior_mean, default.classification_heads) == ("full_data", "trained")
    tuned = methods.create("bayesagg-paper", num_tasks=5, groups=GROUPS, newton_damping=0.25)
    assert tuned.aggregator.newton_damping == 0.25
    assert BayesAgg.paper(GROUPS, scale_by_tasks=True).scale_by_tasks is True


def test_representation_gradient_is_what_a_step_sends_into_the_encoder():
    """Diagnostics read ``representation_gradient``; it must be the step's own g (times K with
    the default ``scale_by_tasks``), computed without a step's effects."""
    torch.manual_seed(0)
    b, d = 12, 4
    agg = BayesAgg(GROUPS, gamma=1.0)
    heads = [nn.Linear(d, g.outputs if hasattr(g, "outputs") else g.classes) for g in GROUPS]
    heads[1] = nn.Linear(d, 2)
    h = torch.randn(b, d, dtype=torch.float64, requires_grad=True)
    heads = [head.double() for head in heads]
    targets = [
        torch.randn(b, 2).double(),
        torch.randint(0, 2, (b, 2)).double(),
        torch.randint(0, 3, (b,)),
    ]
    g = agg.representation_gradient(h, heads, targets)
    assert h.grad is None and agg.step == 0
    agg.backward(h, heads, targets)
    torch.testing.assert_close(h.grad, g / b, rtol=1e-12, atol=1e-14)


# -- the training loop's hooks (methods/base.py) ---------------------------------------------


def test_hooks_default_to_nothing_for_other_methods():
    ls = methods.create("ls", num_tasks=5)
    assert ls.own_warmup_epochs() is None and list(ls.fitted_tasks()) == []
    assert ls.report_notes() == [] and ls.settings_family is None and not ls.needs_groups
    ls.before_evaluation(0, [], lambda: pytest.fail("a method without a fit read the features"))


def test_hooks_answer_for_bayesagg():
    method = BayesAggMTL(5, groups=GROUPS, warmup_epochs=3)
    assert method.own_warmup_epochs() == 3
    assert method.fitted_tasks() == [0, 1]  # the two regression outputs of "r"
    assert method.settings_family == "bayesagg" and method.needs_groups
    assert method.report_notes() == []  # no fit written yet
    trained = BayesAggMTL(5, groups=GROUPS, regression_heads="trained")
    assert trained.fitted_tasks() == []


def test_before_evaluation_refits_the_regression_heads_from_the_warmup_on():
    heads, h, targets = _step_inputs()
    reads = []

    def features():
        reads.append(1)
        yield h.detach(), [targets[0], None, None]

    method = BayesAggMTL(5, groups=GROUPS, warmup_epochs=2)
    before = heads[0].weight.detach().clone()
    method.before_evaluation(0, heads, features)  # epoch 1 of 2 warm-up epochs: no fit
    assert reads == [] and torch.equal(heads[0].weight, before)
    method.before_evaluation(1, heads, features)  # the last warm-up epoch: fitted
    assert reads == [1] and not torch.equal(heads[0].weight, before)
    assert method.report_notes()[0].startswith("BayesAgg-MTL regression heads at the end")
    epochwise = BayesAggMTL(5, groups=GROUPS, regression_fit="epoch")
    epochwise.before_evaluation(5, heads, features)
    assert reads == [1]  # "epoch" fits the heads at end_epoch, not before evaluations


def test_end_warmup_resets_the_shared_optimiser_state_only_when_asked():
    heads, _, _ = _step_inputs()
    shared = nn.Linear(2, 2)
    optimizer = torch.optim.Adam([*shared.parameters(), *heads.parameters()], lr=1e-3)
    sum(p.sum() for p in [*shared.parameters(), *heads.parameters()]).backward()
    optimizer.step()
    BayesAggMTL(5, groups=GROUPS).end_warmup(optimizer, list(shared.parameters()))
    assert all(p in optimizer.state for p in shared.parameters())
    BayesAggMTL(5, groups=GROUPS, reset_encoder_optimizer=True).end_warmup(
        optimizer, list(shared.parameters())
    )
    assert not any(p in optimizer.state for p in shared.parameters())
    assert all(p in optimizer.state for p in heads.parameters())


def test_states_saved_while_the_reset_option_was_bayesaggs_still_load():
    state = BayesAggMTL(5, groups=GROUPS).state_dict()
    del state["reset_encoder_optimizer"]
    state["bayesagg"]["config"]["reset_encoder_optimizer"] = True  # where it used to be
    BayesAggMTL(5, groups=GROUPS, reset_encoder_optimizer=True).load_state_dict(state)
    with pytest.raises(ValueError, match="reset_encoder_optimizer: True in state, False here"):
        BayesAggMTL(5, groups=GROUPS).load_state_dict(state)
