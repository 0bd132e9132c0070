"""QM9: 11 molecular properties regressed by an MPNN (Nash-MTL's protocol).

The recipes and their sources: docs/benchmarks.md, "Settings of the `paper` protocols" (QM9)
and "QM9: two published recipes".

Data from PyPI ``qm9pack`` (no data directory needed); targets standardised with the training
statistics; metric: MAE per task in original units, energies in meV; Delta_m against Nash-MTL's
published STL values; model selection on validation Delta_m, ReduceLROnPlateau on it.
"""

from __future__ import annotations

from dataclasses import replace

from bayesagg.bayes_agg import PAPER_BEHAVIOUR
from bayesagg.benchmarks.spec import Benchmark, Protocol

_ENERGY = 1000.0  # eV -> meV for HOMO, LUMO, ZPVE, U0, U, H, G (docs/data.md, QM9)

# Nash-MTL's QM9 trainer (the paper follows it, App. B): one Adam group, no weight decay, no
# clipping. BayesAgg-MTL: 50 LS epochs and s from the grid {0.75, 0.85, 0.95} (paper App. B);
# gamma is not published for QM9: 5e-3 is this project's choice (docs/benchmarks.md).
_PAPER = Protocol(
    name="paper",
    epochs=300,
    batch_size=120,
    scheduler="plateau",
    plateau_factor=0.7,
    plateau_patience=5,
    min_lr=1e-5,
    method_settings={
        "bayesagg": {
            "warmup_epochs": 50,
            "s_regression": 0.85,
            "gamma": 5e-3,
            "regression_bias": False,
            **PAPER_BEHAVIOUR,
        }
    },
    data_options={"complete_graph": True},
    note=(
        "published recipe; BayesAgg s = 0.85 from the paper's grid {0.75, 0.85, 0.95}, "
        "gamma 5e-3 (not published for QM9)"
    ),
)

SPEC = Benchmark(
    name="qm9",
    package="qm9",
    description="QM9, 11 regression targets, MPNN (Nash-MTL protocol)",
    protocols={
        "paper": _PAPER,
        # NTKMTL (Qin et al., NeurIPS 2025) re-ran its baselines with this recipe: its official
        # experiments/quantum_chemistry/trainer.py sets batch_size=60 and ReduceLROnPlateau
        # patience=10 (factor 0.7, min_lr 1e-5, lr 1e-3, 300 epochs, complete graph, same
        # split). Its numbers are not comparable with the "paper" recipe's (docs/benchmarks.md).
        # The published recipe with two changes (not a derived budget), so BayesAgg-MTL keeps
        # its published behaviour here as in "paper".
        "revised": replace(
            _PAPER,
            name="revised",
            batch_size=60,
            plateau_patience=10,
            note=(
                "NTKMTL's revised QM9 recipe (NeurIPS 2025 code): batch 60, plateau patience 10, "
                "otherwise as published; BayesAgg settings as in 'paper' (not tuned for it)"
            ),
        ),
        # Sized for the comparison campaign (every method and seed on a 2-core machine): an LS
        # run of about 5 minutes on one CPU thread (10,000 molecules x 30 epochs took ~17
        # minutes on two); the warm-up keeps the paper's 1/6 of the epochs.
        "quick": _PAPER.derive(
            "quick",
            epochs=24,
            train_limit=2_000,
            eval_limit=2_000,
            data_options={"complete_graph": False},
            note=(
                "paper recipe on a CPU budget: 2,000 training molecules (2,000 val/test at "
                "most), 24 epochs (BayesAgg warm-up 4), bond graph + distance instead of the "
                "complete graph"
            ),
        ),
        "smoke": _PAPER.derive(
            "smoke",
            epochs=2,
            batch_size=32,
            train_limit=128,
            eval_limit=48,
            method_settings={"bayesagg": {"warmup_epochs": 1}},
            data_options={"complete_graph": False},
            model_options={"dim": 32},
            note="pipeline check only: 128 molecules, 2 epochs (BayesAgg warm-up 1), width 32, bond graph",
        ),
    },
    selection="delta_m",
    regression_metric="mae",
    regression_scale=(
        1.0,
        1.0,
        _ENERGY,
        _ENERGY,
        1.0,
        _ENERGY,
        _ENERGY,
        _ENERGY,
        _ENERGY,
        _ENERGY,
        1.0,
    ),
    standardise_targets=True,
    graph=True,
    published_stl=(
        0.0671,
        0.1814,
        60.576,
        53.915,
        0.5027,
        4.539,
        58.838,
        64.244,
        63.852,
        66.223,
        0.07212,
    ),
    published_source="Nash-MTL (Navon et al. 2022) STL test MAE, as used by BayesAgg-MTL Table 1",
    data_included=True,
)
