"""Data parallelism (docs/distributed.md): 2 processes x B/2 against 1 process x B, in float64.

One spawn of 2 gloo processes on CPU runs every registry method for three steps (each step an
epoch: SGD step, FAMO's after_step, then end_epoch with the local mean losses) on its half of
each global batch; the test process runs the same methods on the whole batches without
torch.distributed (the one-process code, checked against brute force in the other test files)
and the parameter gradients of every step must agree to 1e-6. The same spawn checks the
BayesAgg-MTL posteriors (regression, binary, multiclass) and the epoch prior's refit from
all-reduced sums against the one-process fits on the whole data.

BayesAgg-MTL is also run with a multiclass group (Rao-Blackwell logit samples) and with the
Monte Carlo estimators: their draws are shared by the batch's examples, hence exact as well.
No registry method is inexact under data parallelism (``NO_EXACT_FORM`` would list those that
must refuse instead); what is (dropout, CPU batch norm, a cut last batch) is in
docs/distributed.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from bayesagg import methods, posterior
from bayesagg.distributed import all_gather_cat, average_gradients, resolve_group
from bayesagg.tasks import Binary, Multiclass, Regression, task_losses

WORLD = 2
GLOBAL_BATCH = 8
STEPS = 3
D_IN, D = 5, 6
GROUPS = (Regression("r", 2), Binary("b", 1))
K = 3
TOL = 1e-6
MULTICLASS_GROUPS = (Regression("r", 2), Multiclass("m", 2))  # the binary task as 2 classes
VARIANTS = {
    "bayesagg-multiclass": (MULTICLASS_GROUPS, "rao_blackwell"),
    "bayesagg-multiclass-mc": (MULTICLASS_GROUPS, "monte_carlo"),
    "bayesagg-binary-mc": (GROUPS, "monte_carlo"),
    # the Kronecker-factored multiclass posterior: all-reduced factors, batch and epoch prior
    "bayesagg-multiclass-kron": (MULTICLASS_GROUPS, "qmc"),
}
OPTIONS = {
    "famo-clip": ("famo", {"max_norm": 0.01}),  # the clip needs the global gradient's norm
    "mgda-loss+": ("mgda", {"normalization": "loss+"}),  # parameter space, global losses
    "aligned-mtl-ub-scaled": ("aligned-mtl-ub", {"scale_task_gradients": True}),
    # STCH: step 1 warm-up, step 2 the nadir epoch, step 3 the Tchebycheff objective
    "stch-nadir": ("stch", {"warmup_epochs": 1}),
    # 3 chunks of the global batch of 8 (3, 3, 2): the middle one spans both processes
    "ntkmtl-sr-3-chunks": ("ntkmtl-sr", {"num_chunks": 3}),
    # active clips: the clipped norm is the global direction's (sqrt(w G w^T) on the root)
    "fairgrad-ub-clip": ("fairgrad-ub", {"max_norm": 1e-3}),
    "ntkmtl-ub-clip": ("ntkmtl-ub", {"max_norm": 1e-3}),
    # steps 1 and 3 solve on the Gramian's root, step 2 clips sum alpha_i dL_i/dh by its global
    # norm (one all-reduced scalar)
    "nash-mtl-ub-clip": ("nash-mtl-ub", {"update_weights_every": 2, "max_norm": 1e-3}),
}
#: Registry methods with no exact data-parallel form, with the reason: they must raise
#: NotImplementedError under a process group of more than one process (none at present: the
#: representation-level ones are Gramian-based, GradDrop or NTKMTL-SR, docs/distributed.md).
NO_EXACT_FORM: dict[str, str] = {}


def _method(name: str) -> methods.Method:
    if name == "stl":
        return methods.create(name, num_tasks=K, task=1)
    if name in ("bayesagg", "bayesagg-paper"):
        return methods.create(name, num_tasks=K, groups=GROUPS)
    if name in OPTIONS:  # code paths that only some hyper-parameters take
        base, hparams = OPTIONS[name]
        return methods.create(base, num_tasks=K, **hparams)
    if name in VARIANTS:  # BayesAgg-MTL's sampling moment estimators
        groups, moments = VARIANTS[name]
        extra = {"multiclass_posterior": "kron"} if name.endswith("-kron") else {}
        return methods.create(
            "bayesagg", num_tasks=K, groups=groups, moments=moments, num_samples=64, **extra
        )
    if name in ("nash-mtl", "nash-mtl-ub"):  # steps 1 and 3 solve, step 2 reuses the weights
        return methods.create(name, num_tasks=K, update_weights_every=2)
    return methods.create(name, num_tasks=K)


def _batches() -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    g = torch.Generator().manual_seed(123)
    out = []
    for _ in range(STEPS):
        x = torch.randn(GLOBAL_BATCH, D_IN, generator=g, dtype=torch.float64)
        y_r = torch.randn(GLOBAL_BATCH, 2, generator=g, dtype=torch.float64)
        y_b = torch.randint(0, 2, (GLOBAL_BATCH, 1), generator=g).double()
        out.append((x, [y_r, y_b]))
    return out


def run_method(name: str, group, rank: int, world: int) -> list[list[torch.Tensor | None]]:
    """Return, per step, every parameter's gradient (model, then method) after the sync."""
    torch.manual_seed(0)  # same model and method state in every process and in the reference
    encoder = nn.Sequential(nn.Linear(D_IN, D), nn.Tanh()).double()
    multiclass = VARIANTS.get(name, (GROUPS,))[0] is MULTICLASS_GROUPS
    second = 2 if multiclass else 1
    heads = nn.ModuleList([nn.Linear(D, 2), nn.Linear(D, second)]).double()
    method = _method(name)
    method.process_group = group if group is not None else False
    shared, task = list(encoder.parameters()), list(heads.parameters())
    extra = list(method.parameters())
    optimizer = torch.optim.SGD(shared + task + extra, lr=0.1)
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    grads: list[list[torch.Tensor | None]] = []
    for x, targets in _batches():
        x, targets = x[rows], [t[rows] for t in targets]
        if multiclass:
            targets = [targets[0], targets[1].reshape(-1).long()]
        groups = MULTICLASS_GROUPS if multiclass else GROUPS
        h = encoder(x)
        losses = task_losses(groups, [head(h) for head in heads], targets)
        optimizer.zero_grad(set_to_none=True)
        method.backward(
            losses,
            shared_parameters=shared,
            task_parameters=task,
            representation=h,
            heads=heads,
            targets=targets,
        )
        skip = shared if method.reduces_shared_gradients() else ()
        average_gradients(shared + task + extra, group, skip=skip)
        grads.append([None if p.grad is None else p.grad.clone() for p in shared + task + extra])
        optimizer.step()
        if method.needs_after_step:
            with torch.no_grad():
                h = encoder(x)
                method.after_step(task_losses(groups, [head(h) for head in heads], targets))
        # one-step epochs; the local epoch means: the methods that use them (DWA, IGBv2)
        # average them over the processes themselves
        method.end_epoch(losses.detach())
    return grads


def _posterior_checks(group, rank: int, world: int) -> dict[str, torch.Tensor]:
    """Posteriors and an epoch-prior refit from the local half of the data, all-reduced."""
    from bayesagg.distributed import all_reduce_sum
    from bayesagg.prior import EpochPrior

    g = torch.Generator().manual_seed(7)
    n, d = 12, 3
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    y_r = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y_b = torch.randint(0, 2, (n, 2), generator=g).double()
    y_m = torch.randint(0, 3, (n,), generator=g)
    w_b, b_b = torch.randn(2, d, generator=g).double(), torch.randn(2, generator=g).double()
    w_m, b_m = torch.randn(3, d, generator=g).double(), torch.randn(3, generator=g).double()
    rows = slice(rank * n // world, (rank + 1) * n // world)
    reduce = None if group is None else (lambda t: all_reduce_sum(t, group))
    out: dict[str, torch.Tensor] = {}
    m0, p0 = posterior.isotropic_prior("regression", 2, d, 0.5, dtype=torch.float64)
    post = posterior.regression(h[rows], y_r[rows], m0, p0, reduce=reduce)
    out["regression"] = torch.cat([post.mean.reshape(-1), post.precision.reshape(-1)])
    m0, p0 = posterior.isotropic_prior("binary", 2, d + 1, 0.5, dtype=torch.float64)
    post = posterior.binary(h[rows], y_b[rows], w_b, b_b, m0, p0, reduce=reduce)
    out["binary"] = torch.cat([post.mean.reshape(-1), post.precision.reshape(-1)])
    m0, p0 = posterior.isotropic_prior("multiclass", 3, d + 1, 0.5, dtype=torch.float64)
    post = posterior.multiclass(h[rows], y_m[rows], w_m, b_m, m0, p0, reduce=reduce)
    out["multiclass"] = torch.cat([post.mean.reshape(-1), post.precision.reshape(-1)])
    groups = (Regression("r", 2), Binary("b", 2), Multiclass("m", 3))
    prior = EpochPrior(groups, gamma=0.5)
    prior.reduce = reduce
    heads = [nn.Linear(d, 2).double(), nn.Linear(d, 2).double(), nn.Linear(d, 3).double()]
    with torch.no_grad():
        heads[1].weight.copy_(w_b), heads[1].bias.copy_(b_b)
        heads[2].weight.copy_(w_m), heads[2].bias.copy_(b_m)
    for half in (slice(0, n // 2), slice(n // 2, n)):  # two steps of the epoch
        sub = range(n)[half][rank::world]
        idx = torch.tensor(list(sub))
        prior.accumulate(h[idx], [y_r[idx], y_b[idx], y_m[idx]], [True, True, True])
    prior.refit(heads)
    out["prior"] = torch.cat(
        [torch.cat([p.mean.reshape(-1), p.precision.reshape(-1)]) for p in prior.posteriors]
    )
    # The Kronecker-factored multiclass posterior: its batch fit and its epoch refit.
    from bayesagg.kronecker import KroneckerPrecision
    from bayesagg.kronecker import posterior as kron_posterior

    iso = KroneckerPrecision.isotropic(3, d + 1, 0.5, dtype=torch.float64)
    fit = kron_posterior(h[rows], y_m[rows], w_m, b_m, m0, iso, reduce=reduce)
    out["kron"] = torch.cat([fit.mean.reshape(-1), fit.precision.dense().reshape(-1)])
    kron_prior = EpochPrior(groups, gamma=0.5, multiclass_posterior="kron")
    kron_prior.reduce = reduce
    for half in (slice(0, n // 2), slice(n // 2, n)):
        idx = torch.tensor(list(range(n)[half][rank::world]))
        kron_prior.accumulate(h[idx], [y_r[idx], y_b[idx], y_m[idx]], [True, True, True])
    kron_prior.refit(heads)
    last = kron_prior.posteriors[2]
    out["kron_prior"] = torch.cat([last.mean.reshape(-1), last.precision.dense().reshape(-1)])
    return out


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        group = resolve_group(None)
        results = {}
        for name in methods.names():
            try:
                results[name] = run_method(name, group, rank, world)
            except NotImplementedError as err:  # must be one of NO_EXACT_FORM (checked)
                results[name] = str(err)  # type: ignore[assignment]
        results["posteriors"] = _posterior_checks(group, rank, world)  # type: ignore[assignment]
        for name in [*VARIANTS, *OPTIONS]:
            results[name] = run_method(name, group, rank, world)
        # unequal shards (evaluation): rank r holds r + 1 rows
        rows = torch.arange(rank + 1, dtype=torch.float64)[:, None] + 10 * rank
        results["gathered"] = all_gather_cat(rows, group)  # type: ignore[assignment]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict]:
    """Run the worker on 2 gloo processes once; return each rank's results."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(WORLD, str(root / "init"), str(root)), nprocs=WORLD, join=True)
    return [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _assert_same(name: str, got: list, want: list) -> None:
    for step, (g_step, w_step) in enumerate(zip(got, want, strict=True)):
        for i, (g, w) in enumerate(zip(g_step, w_step, strict=True)):
            where = f"{name}, step {step + 1}, parameter {i}"
            assert (g is None) == (w is None), f"{where}: gradient presence differs"
            if w is None:
                continue
            scale = max(1.0, float(w.abs().max()))
            err = float((g - w).abs().max())
            assert err <= TOL * scale, f"{where}: max |2 proc - 1 proc| = {err:.3g}"


@pytest.mark.parametrize("name", methods.names())
def test_one_step_of_every_method_is_exact(two_processes, name):
    """2 processes x B/2 give the one-process gradients of B, step by step, to 1e-6.

    Or, for the methods of ``NO_EXACT_FORM``, refuse with ``NotImplementedError``.
    """
    for rank, results in enumerate(two_processes):
        assert name in results, f"rank {rank} ran no {name}"
        if name in NO_EXACT_FORM:
            assert isinstance(results[name], str), f"{name} ran under a process group"
            assert "no exact data-parallel form" in results[name], results[name]
        else:
            assert not isinstance(results[name], str), f"{name} refused: {results[name]}"
    if name not in NO_EXACT_FORM:
        reference = run_method(name, None, 0, 1)
        for rank, results in enumerate(two_processes):
            _assert_same(f"{name} (rank {rank})", results[name], reference)


def test_posteriors_and_prior_refit_from_all_reduced_sums(two_processes):
    """Regression, binary, multiclass posteriors and the epoch prior equal the full-data fits."""
    reference = _posterior_checks(None, 0, 1)
    for results in two_processes:
        for key, want in reference.items():
            got = results["posteriors"][key]
            assert torch.allclose(got, want, rtol=1e-9, atol=1e-9), key


def test_resolve_group_without_torch_distributed():
    assert resolve_group(None) is None
    assert resolve_group(False) is None
    with pytest.raises(RuntimeError, match="not initialised"):
        resolve_group(object())


def test_no_exact_form_is_an_error_not_a_silent_fallback(tmp_path: Path):
    """A representation-level method without a Gramian form refuses under a process group.

    ExcessMTL (per-coordinate state) and a subclass of a Gramian method that changes its rule
    (here: coordinate-wise clipping, which is not rotation-invariant) are not on the list.
    """
    from bayesagg.methods._data_parallel import representation_direction
    from bayesagg.methods.gradient.excess_mtl import ExcessMTL
    from bayesagg.methods.gradient.upgrad import UPGrad

    class ClippedUPGrad(UPGrad):
        def aggregate(self, jacobian):
            return super().aggregate(jacobian).clamp(-1e-3, 1e-3)

    jac = torch.randn(2, 3, 4)
    for method in (ClippedUPGrad(2), ExcessMTL(2)):
        with pytest.raises(NotImplementedError, match="no exact data-parallel form"):
            representation_direction(method, jac, torch.ones(2), torch.randn(3, 4), object())


def test_every_representation_method_has_a_data_parallel_form_or_is_listed():
    """Each representation-space registry method is on the Gramian list, GradDrop or NTKMTL-SR.

    With no process group the data-parallel form is the one-process rule through the Gramian's
    square root: the same direction as the method on the whole Jacobian (the square-root trick
    on its own, without communication), two steps so that the state carries over.
    """
    from bayesagg.methods._data_parallel import representation_direction

    g = torch.Generator().manual_seed(3)
    checked = []
    for name in methods.names():
        if name in NO_EXACT_FORM or name in ("bayesagg", "bayesagg-paper"):
            continue
        torch.manual_seed(0)  # the same private generators (PCGrad, GradVac, GradDrop)
        method = _method(name)
        if method.space != "representation":
            continue
        torch.manual_seed(0)
        twin = _method(name)
        for _ in range(2):
            jac = torch.randn(K, 5, 4, generator=g, dtype=torch.float64)
            h = torch.randn(5, 4, generator=g, dtype=torch.float64)
            losses = torch.rand(K, generator=g, dtype=torch.float64) + 0.5
            got = representation_direction(method, jac, losses, h, None)
            want = twin.direction(jac, losses=losses, representation=h)
            torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10, msg=name)
        checked.append(name)
    assert {"mgda-ub", "graddrop", "ntkmtl-sr", "config-ub", "ntkmtl-ub"} <= set(checked)


def test_weights_inconsistent_with_the_direction_are_an_error():
    """The square-root path reads last_weights: a method whose weights do not give its
    direction would be silently wrong, so it is checked (here a patched ConFIG)."""
    from bayesagg.methods._data_parallel import representation_direction

    method = methods.create("config-ub", num_tasks=2)
    rule = method.aggregate

    def wrong(jacobian):
        out = rule(jacobian)
        method.last_weights = method.last_weights * 1.01
        return out

    method.aggregate = wrong  # type: ignore[method-assign]
    jac = torch.randn(2, 3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="last_weights do not reproduce"):
        representation_direction(method, jac, torch.ones(2), torch.randn(3, 4), None)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_hyper_parameter_dependent_paths_are_exact(two_processes, name):
    """FAMO's gradient clip, MGDA's loss normalisation, Aligned-MTL's scaled task gradients,
    STCH's nadir and Tchebycheff epochs, NTKMTL-SR's chunks across processes, active clips."""
    reference = run_method(name, None, 0, 1)
    for rank, results in enumerate(two_processes):
        _assert_same(f"{name} (rank {rank})", results[name], reference)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_bayesagg_sampling_moment_estimators_are_exact(two_processes, name):
    """The sampled moments are exact too: their draws do not depend on the batch.

    The multiclass Rao-Blackwell estimator draws [S, C] standard normals and the Monte Carlo
    estimators [S, weights] weight samples, shared by all examples of the batch; every process
    holds the same generator state, so the draws are the one-process draws.
    """
    reference = run_method(name, None, 0, 1)
    for rank, results in enumerate(two_processes):
        _assert_same(f"{name} (rank {rank})", results[name], reference)


def test_all_gather_of_unequal_shards_in_rank_order(two_processes):
    want = torch.tensor([[0.0], [10.0], [11.0]], dtype=torch.float64)
    for results in two_processes:
        assert torch.equal(results["gathered"], want)


def test_ntkmtl_sr_refuses_unequal_shares(monkeypatch):
    """The chunks are placed on global indices r*b..: unequal shares would misplace them."""
    from bayesagg.methods import _data_parallel

    def other_holds_one_more(tensor, group):  # a 2-process sum where the other rank has b + 1
        other = torch.zeros_like(tensor)
        other[:, -1] = tensor[:, -1] + 1
        return tensor + other

    monkeypatch.setattr(_data_parallel, "world_size", lambda group: 2)
    monkeypatch.setattr(_data_parallel, "rank", lambda group: 0)
    monkeypatch.setattr(_data_parallel, "all_reduce_sum", other_holds_one_more)
    method = methods.create("ntkmtl-sr", num_tasks=2)
    jac = torch.randn(2, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="unequal parts of the batch"):
        _data_parallel.representation_direction(method, jac, torch.ones(2), torch.randn(3, 4), 1)
