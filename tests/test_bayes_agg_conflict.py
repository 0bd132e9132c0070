"""BayesAgg-MTL must train as well as linear scalarisation on a small conflicting-task problem.

Two 4-class tasks read different projections of x in R^8 (the argmax of 4 of 8 random linear
maps each) through a 4-wide encoder bottleneck, so the tasks compete for the representation,
as MultiMNIST's two digits do. Both methods start from the same initialisation and see the
same batches (Adam 3e-3, 8 epochs of 2,000 examples, batch 100); BayesAgg-MTL has one LS
warm-up epoch, s = 0.1 and gamma = 5e-3 (UTKFace's classification settings). Observed at this
seed: LS 0.707 / 0.880, BayesAgg-MTL 0.728 / 0.832 test accuracy (mean 1.3 points lower);
over seeds 0-3 the mean-accuracy difference was -1.3, -0.1, -0.7 and +6.4 points. The test
asks for the mean test accuracy within 2.5 points of LS's.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesagg import BayesAgg, Multiclass
from bayesagg.tasks import task_losses

GROUPS = (Multiclass("a", 4), Multiclass("b", 4))
MARGIN = 0.025


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(n: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(8, 8, generator=torch.Generator().manual_seed(99))
    x = torch.randn(n, 8, generator=g)
    z = x @ maps
    return x, [z[:, :4].argmax(1), z[:, 4:].argmax(1)]


def _train(method: str, seed: int = 0, epochs: int = 8, n: int = 2000) -> list[float]:
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(8, 32), nn.ELU(), nn.Linear(32, 4), nn.ELU())
    heads = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
    optimizer = torch.optim.Adam([*encoder.parameters(), *heads.parameters()], lr=3e-3)
    x, y = _data(n, seed)
    x_test, y_test = _data(2000, seed + 100)
    agg = None
    if method == "bayesagg":
        agg = BayesAgg(
            GROUPS,
            warmup_epochs=1,
            s_classification=0.1,
            gamma=5e-3,
            generator=torch.Generator().manual_seed(0),
        )
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for index in torch.randperm(n, generator=order).split(100):
            optimizer.zero_grad()
            h = encoder(x[index])
            targets = [t[index] for t in y]
            if agg is None:
                task_losses(GROUPS, [head(h) for head in heads], targets).sum().backward()
            else:
                agg.backward(h, heads, targets)
            optimizer.step()
        if agg is not None:
            agg.end_epoch()
    with torch.no_grad():
        h = encoder(x_test)
        return [
            float((head(h).argmax(1) == t).float().mean())
            for head, t in zip(heads, y_test, strict=True)
        ]


@pytest.mark.slow
def test_bayesagg_reaches_linear_scalarisation_on_conflicting_tasks():
    ls = _train("ls")
    ours = _train("bayesagg")
    assert min(ls) > 0.6, f"the problem is not learned by LS: {ls}"
    gap = sum(ours) / 2 - sum(ls) / 2
    assert gap > -MARGIN, f"BayesAgg-MTL {ours} vs LS {ls}: mean accuracy {100 * gap:+.1f} points"
