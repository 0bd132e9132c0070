"""bayesagg.lightning: a real ``lightning.Trainer`` on CPU trains as the plain loop does.

The reference of every comparison is a training loop written out here, the README's loop
("Every baseline behind one interface") with each hook the method has, never the module under
test. On a tiny float64 problem (tests/lightning_problem.py) with a shuffled order that is a
function of the epoch:

- one method of each family (linear scalarisation; UW, whose log-variances the optimiser
  trains; DWA, whose weights come from ``end_epoch``; FAMO, with ``after_step``; MGDA in
  parameter space; UPGrad's "-ub" representation form; BayesAgg-MTL with its warm-up,
  ``end_warmup`` and ``end_epoch`` prior refit, and once with ``before_evaluation``'s eval-mode
  refit) ends with the plain loop's weights;
- a run resumed with ``Trainer.fit(ckpt_path=...)`` from a ``ModelCheckpoint`` saved at a
  validation end equals the uninterrupted run, and ``end_epoch`` runs before validation;
- ``strategy="ddp"`` with 2 CPU processes (gloo, Lightning's own launcher: a script run in a
  subprocess) ends with the one-process run's weights on the same global batches.

Without Lightning installed the module is skipped, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

try:
    import lightning.pytorch as pl
except ImportError as err:  # the optional extra is not installed
    if os.environ.get("CI", "").lower() == "true":
        raise ImportError(f"CI=true and Lightning is not importable ({err})") from err
    pytest.skip(
        f"Lightning is not installed ({err}): pip install -e '.[lightning]'",
        allow_module_level=True,
    )

import bayesagg.methods
import lightning_problem as problem
from bayesagg.lightning import MultiTaskModule, build_method
from bayesagg.methods.base import Method
from bayesagg.tasks import task_losses

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
BATCH = 16


def loader() -> DataLoader:
    data = problem.make_data()
    return DataLoader(data, batch_size=BATCH, sampler=problem.EpochPermutation(len(data)))


def plain_loop(
    name: str,
    *,
    epochs: int = EPOCHS,
    refit: bool = False,
    batches: int | None = None,
    step_lr: bool = False,
) -> tuple[dict[str, Tensor], Method, Tensor]:
    """The README's own loop with every hook: the reference (written out, not the module).

    Returns the final weights, the method and the last epoch's mean task losses.
    """
    encoder, heads = problem.make_parts()
    method = bayesagg.methods.create(
        name,
        num_tasks=problem.K,
        **({"groups": problem.GROUPS} if bayesagg.methods.needs_groups(name) else {}),
        **problem.OPTIONS.get(name, {}),
    )
    optimizer = torch.optim.Adam(
        [*encoder.parameters(), *heads.parameters(), *method.parameters()], lr=problem.LR
    )
    train = loader()
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    warmup = method.own_warmup_epochs()
    for epoch in range(epochs):
        train.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        if warmup and epoch == warmup:
            method.end_warmup(optimizer, list(encoder.parameters()))
        total, steps = torch.zeros(problem.K, dtype=torch.float64), 0
        for x, *targets in train:
            if steps == batches:  # Trainer(limit_train_batches=batches)
                break
            optimizer.zero_grad()
            h = encoder(x)
            losses = task_losses(problem.GROUPS, [head(h) for head in heads], targets)
            method.backward(
                losses,
                shared_parameters=list(encoder.parameters()),
                task_parameters=list(heads.parameters()),
                representation=h,
                heads=heads,
                targets=targets,
            )
            optimizer.step()
            if method.needs_after_step:
                with torch.no_grad():
                    h = encoder(x)
                    method.after_step(
                        task_losses(problem.GROUPS, [head(h) for head in heads], targets)
                    )
            total += losses.detach()
            steps += 1
        epoch_losses = total / steps
        method.end_epoch(epoch_losses)
        if refit:
            encoder.eval()
            with torch.no_grad():
                ordered = DataLoader(problem.make_data(), batch_size=BATCH)
                method.before_evaluation(
                    epoch, heads, lambda ordered=ordered: ((encoder(x), t) for x, *t in ordered)
                )
            encoder.train()
        if step_lr:
            schedule.step()
    return problem.weights_of(encoder, heads), method, epoch_losses


class RefitModule(MultiTaskModule):
    """BayesAgg-MTL's eval-mode refit of its regression heads on the ordered training set."""

    def refit_batches(self) -> Any:
        return DataLoader(problem.make_data(), batch_size=BATCH)


class ValidatedModule(MultiTaskModule):
    """With a validation loop that logs a metric and records BayesAgg-MTL's epoch counter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, int]] = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, targets = self.split_batch(batch)
        loss = task_losses(self.groups, self(x)[1], targets).sum()
        self.log("val_loss", loss)
        aggregator = getattr(self.method, "aggregator", None)  # BayesAgg-MTL's
        if aggregator is not None and not self.trainer.sanity_checking and batch_idx == 0:
            self.seen.append((self.current_epoch, aggregator.epoch))


def fit(
    name: str,
    *,
    module_class: type[MultiTaskModule] = MultiTaskModule,
    epochs: int = EPOCHS,
    seed: int = 0,
    ckpt_path: str | None = None,
    callbacks: list[Any] | None = None,
    validate: bool = False,
    **trainer_options: Any,
) -> MultiTaskModule:
    encoder, heads = problem.make_parts(seed)
    module = module_class(
        encoder,
        heads,
        problem.GROUPS,
        name,
        method_options=problem.OPTIONS.get(name),
        lr=problem.LR,
    )
    options = {**problem.trainer_options(), **trainer_options}
    if callbacks:
        options["enable_checkpointing"] = True
    trainer = pl.Trainer(max_epochs=epochs, callbacks=callbacks, **options)
    val = DataLoader(problem.make_data(), batch_size=32) if validate else None
    trainer.fit(module, loader(), val, ckpt_path=ckpt_path)
    return module


def assert_same_weights(module: MultiTaskModule, reference: dict[str, Tensor]) -> None:
    weights = module.state_dict()
    assert set(weights) == set(reference)
    for key, value in reference.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-12, atol=1e-12, msg=key)


# -- one method of each family: the plain loop's final weights ------------------------------
FAMILIES = ["ls", "uw", "dwa", "famo", "mgda", "upgrad-ub", "bayesagg"]


@pytest.mark.parametrize("name", FAMILIES)
def test_lightning_trainer_ends_with_the_plain_loops_weights(name: str):
    reference, method, _ = plain_loop(name)
    module = fit(name)
    assert_same_weights(module, reference)
    if method.last_weights is not None:
        assert module.method.last_weights is not None
        torch.testing.assert_close(module.method.last_weights, method.last_weights)


def test_the_epoch_losses_are_logged_for_callbacks():
    module = fit("uw")
    logged = module.trainer.callback_metrics
    reference = plain_loop("uw")[2]  # the last epoch's mean task losses
    assert module.last_epoch_losses is not None
    torch.testing.assert_close(module.last_epoch_losses, reference, rtol=1e-12, atol=1e-12)
    assert module.task_names == ["r[0]", "r[1]", "b", "m"]
    for name, value in zip(module.task_names, reference, strict=True):
        torch.testing.assert_close(logged[f"train_loss/{name}"], value)


def test_before_evaluation_refits_the_regression_heads_as_the_plain_loop():
    reference, method, _ = plain_loop("bayesagg", refit=True)
    assert "fit_regression_heads" in (method.aggregator.regression_fit_source or "")  # type: ignore[attr-defined]
    module = fit("bayesagg", module_class=RefitModule)
    assert_same_weights(module, reference)
    # and the refit does change the heads: without it the weights differ
    assert not torch.allclose(
        plain_loop("bayesagg")[0]["heads.0.weight"], reference["heads.0.weight"]
    )


def test_end_epoch_follows_the_last_batch_of_a_limited_epoch():
    """``limit_train_batches``: the epoch ends, and ``end_epoch`` runs, after its 2nd batch."""
    module = fit("bayesagg", module_class=ValidatedModule, validate=True, limit_train_batches=2)
    assert module.seen == [(0, 1), (1, 2), (2, 3)]  # end_epoch before each validation
    assert_same_weights(module, plain_loop("bayesagg", batches=2)[0])


class ScheduledModule(MultiTaskModule):
    """Adam with a learning rate halved after every epoch (a StepLR of interval "epoch")."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def test_an_epoch_scheduler_is_stepped_after_each_epoch():
    module = fit("dwa", module_class=ScheduledModule)
    assert_same_weights(module, plain_loop("dwa", step_lr=True)[0])
    assert not torch.allclose(
        plain_loop("dwa")[0]["encoder.0.weight"],
        plain_loop("dwa", step_lr=True)[0]["encoder.0.weight"],
    )


# -- checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["uw", "famo", "bayesagg"])
def test_resuming_from_a_model_checkpoint_equals_the_uninterrupted_run(name: str, tmp_path: Path):
    # saved at each validation end (a monitored metric): after the epoch's end_epoch
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}", monitor="val_loss", save_top_k=-1
    )
    whole = fit(name, module_class=ValidatedModule, callbacks=[checkpoint], validate=True)
    saved = tmp_path / "epoch=0.ckpt"
    assert saved.exists(), sorted(p.name for p in tmp_path.iterdir())
    # another initialisation: everything must come from the checkpoint
    resumed = fit(name, module_class=ValidatedModule, seed=123, ckpt_path=str(saved), validate=True)
    assert_same_weights(resumed, problem.weights_of(whole.encoder, whole.heads))
    assert_same_weights(resumed, plain_loop(name)[0])
    if name == "bayesagg":
        # end_epoch ran before each validation: BayesAgg-MTL had counted the epoch
        assert whole.seen == [(0, 1), (1, 2), (2, 3)]
        assert resumed.seen == [(1, 2), (2, 3)]


def test_a_checkpoint_without_the_method_state_is_refused():
    module = MultiTaskModule(*problem.make_parts(), problem.GROUPS, "ls")
    with pytest.raises(ValueError, match="no multi-task method state"):
        module.on_load_checkpoint({"state_dict": {}})
    other = MultiTaskModule(*problem.make_parts(), problem.GROUPS, "famo")
    saved: dict[str, Any] = {}
    other.on_save_checkpoint(saved)
    with pytest.raises(ValueError, match="of method 'famo', this module trains 'ls'"):
        module.on_load_checkpoint(saved)


# -- bad input -----------------------------------------------------------------------------------
def test_bad_input_is_refused_with_a_clear_error():
    encoder, heads = problem.make_parts()
    with pytest.raises(ValueError, match="2 heads for 3 task groups"):
        MultiTaskModule(encoder, list(heads)[:2], problem.GROUPS, "ls")
    with pytest.raises(ValueError, match="method_options"):
        build_method(bayesagg.methods.create("ls", num_tasks=4), problem.GROUPS, {"x": 1})
    with pytest.raises(ValueError, match="built for 3 tasks"):
        MultiTaskModule(encoder, heads, problem.GROUPS, bayesagg.methods.create("ls", num_tasks=3))
    with pytest.raises(KeyError, match="unknown method"):
        MultiTaskModule(encoder, heads, problem.GROUPS, "no-such-method")
    module = MultiTaskModule(encoder, heads, problem.GROUPS, "ls")
    with pytest.raises(ValueError, match="one target per task group"):
        module.split_batch((torch.zeros(2, 5),))


class ForgetfulModule(MultiTaskModule):
    """An optimiser without the method's own parameters (UW would stay linear scalarisation)."""

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def test_method_parameters_left_out_of_the_optimiser_are_an_error():
    with pytest.raises(ValueError, match="in no optimiser"):
        fit("uw", module_class=ForgetfulModule, epochs=1)


@pytest.mark.parametrize("name", ["ls", "upgrad-ub", "bayesagg"])
def test_a_gradient_scaler_trains_the_same_run(name):
    """16-mixed's scaler (fp16 on GPUs; here injected into bf16-mixed on the CPU): the module
    hands its scale to the method and Lightning's step unscales, so the weights are those of
    the same run without a scaler (the scale is a power of two: the products are exact)."""
    weights = []
    for scaled in (False, True):
        encoder, heads = problem.make_parts()
        module = MultiTaskModule(
            encoder, heads, problem.GROUPS, name, method_options=problem.OPTIONS.get(name),
            lr=problem.LR,
        )  # fmt: skip
        trainer = pl.Trainer(max_epochs=2, precision="bf16-mixed", **problem.trainer_options())
        if scaled:
            scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
            trainer.precision_plugin.scaler = scaler
        trainer.fit(module, loader())
        weights.append({k: v.detach().clone() for k, v in module.state_dict().items()})
    assert scaler.get_scale() == 2.0**10  # no overflow, so no skipped step
    for key, plain in weights[0].items():
        torch.testing.assert_close(weights[1][key], plain, rtol=1e-6, atol=1e-7)


def test_a_method_that_refuses_a_scale_names_itself():
    module = MultiTaskModule(*problem.make_parts(), problem.GROUPS, "famo")
    trainer = pl.Trainer(max_epochs=1, precision="bf16-mixed", **problem.trainer_options())
    trainer.precision_plugin.scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(ValueError, match="famo does not take a loss_scale"):
        trainer.fit(module, loader())


# -- import and data parallelism -----------------------------------------------------------------
def test_import_bayesagg_does_not_import_lightning():
    code = (
        "import sys, bayesagg, bayesagg.methods, bayesagg.distributed\n"
        "for name in bayesagg.methods.names(): bayesagg.methods.method_class(name)\n"
        "assert 'lightning' not in sys.modules and 'bayesagg.lightning' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


DATA_PARALLEL = ["famo", "uw", "mgda", "upgrad-ub", "bayesagg"]


@pytest.mark.slow
def test_two_process_ddp_strategy_matches_one_process(tmp_path: Path):
    """``Trainer(strategy="ddp", devices=2)`` on CPU, 8 examples a process, against 16 on one."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "lightning_problem.py"),
            str(tmp_path),
            "--devices",
            "2",
            "--methods",
            ",".join(DATA_PARALLEL),
            "--global-batch",
            str(BATCH),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for name in DATA_PARALLEL:
        two = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        # DDP's reducer all-reduced nothing: the module averaged the gradients once, itself
        assert two["ddp_reductions"] == 0, name
        one = problem.fit_lightning(name, devices=1, batch_size=BATCH, epochs=2)
        for key, value in one.state_dict().items():
            torch.testing.assert_close(two["weights"][key], value, rtol=1e-9, atol=1e-11, msg=key)
        torch.testing.assert_close(two["epoch_losses"], one.last_epoch_losses)


def test_the_example_runs(tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lightning_own_loop.py"), "--epochs", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Warning" not in done.stderr, done.stderr[-4000:]
    assert "test:" in done.stdout
