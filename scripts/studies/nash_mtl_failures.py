"""Diagnose Nash-MTL's failed convex sub-problems from a dump (``--hp dump_failures=FILE``).

For every failed solve recorded by :class:`bayesagg.methods.gradient.nash_mtl.NashMTL`
(``solver="ccp"``, the official code's sequence of convex problems, with
``dump_failures=FILE``), this prints, on ``G_n = G / |G|_F``:

- ``min(G_n a)`` at the linearisation point ``a`` (the previous weights for the first inner
  solve) and how many tasks have ``(G_n a)_i <= 0``: there ``log (G_n a)_i`` is undefined, so
  the linearised sub-problem is built outside the domain of the function it linearises;
- the spectrum of ``G_n`` (its smallest eigenvalue and condition number: scale and rank);
- the sub-problem's linear objective ``c`` and an LP certificate of unboundedness: a ray
  ``d >= 0, G_n d >= 0, sum d = 1`` with ``c^T d < 0`` (along ``a0 + t d`` from any feasible
  ``a0`` with ``G_n a0 > 0`` every constraint stays satisfied and the objective goes to minus
  infinity: the sub-problem is unbounded in exact arithmetic, not by a solver tolerance);
- the same sub-problem solved by Clarabel instead of ECOS (cvxpy);
- torchjd's ``NashMTL`` started from the same previous weights on the same Gramian (its solver
  status, and whether it returned the start unchanged: torchjd keeps the previous weights
  silently, as the official code does);
- the exact Nash bargaining solution (``solver="exact"``): its residual
  ``max_i |a_i (G_n a)_i - 1|`` and Newton iterations.

    PYTHONPATH=src python -m bayesagg run --benchmark qm9 --method nash-mtl --protocol quick \\
        --epochs 6 --train-limit 1000 --model-option dim=32 --hp solver=ccp \\
        --hp dump_failures=nash_failures.pt --out runs-nash
    PYTHONPATH=src python scripts/studies/nash_mtl_failures.py nash_failures.pt
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import numpy as np
import torch

from bayesagg.methods.gradient.nash_mtl import nash_bargaining_weights


def ccp_objective(gn: np.ndarray, scale: float, a: np.ndarray) -> np.ndarray:
    """The linear objective of the official sub-problem linearised at ``a`` (``G_n`` units)."""
    with np.errstate(divide="ignore"):
        return gn.sum(axis=1) + (1.0 / a + gn @ (1.0 / (gn @ a))) / scale


def unbounded_ray(gn: np.ndarray, c: np.ndarray) -> float:
    """``min c^T d`` over ``d >= 0, G_n d >= 0, sum d = 1`` (< 0: the sub-problem is unbounded)."""
    from scipy.optimize import linprog

    k = len(c)
    res = linprog(
        c, A_ub=-gn, b_ub=np.zeros(k), A_eq=np.ones((1, k)), b_eq=[1.0], bounds=[(0, None)] * k
    )
    return float(res.fun) if res.status == 0 else float("nan")


def ccp_with(solver: str, gn: np.ndarray, scale: float, a: np.ndarray) -> str:
    """Status of the official sub-problem at ``a`` solved by ``solver`` (cvxpy)."""
    import cvxpy as cp

    k = len(a)
    alpha = cp.Variable(k, nonneg=True)
    c = ccp_objective(gn, scale, a)
    if not np.all(np.isfinite(c)):
        return "non-finite objective"
    g_alpha = gn @ alpha
    problem = cp.Problem(
        cp.Minimize(c @ alpha), [-cp.log(alpha) - cp.log(g_alpha) <= np.log(scale)]
    )
    try:
        problem.solve(solver=solver)
    except cp.SolverError as err:
        return f"error ({err})"
    return str(problem.status)


def torchjd_status(gramian: np.ndarray, alpha_prev: np.ndarray) -> tuple[str, bool]:
    """torchjd's NashMTL from ``alpha_prev`` on ``gramian``: solver status, start kept unchanged."""
    import torchjd.aggregation as tja

    k = len(alpha_prev)
    agg = tja.NashMTL(n_tasks=k, max_norm=0.0)
    agg.weighting.prvs_alpha = alpha_prev.copy()
    # a K x K matrix whose Gramian is G: torchjd forms G from the "Jacobian" it is given
    factor = torch.from_numpy(np.linalg.cholesky(gramian))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weights = agg.weighting(factor).numpy()
    kept = bool(np.allclose(weights, alpha_prev, rtol=0, atol=0))
    return str(agg.weighting.prob.status), kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dump", help="file written by NashMTL(dump_failures=...)")
    parser.add_argument("--rows", type=int, default=10, help="failures printed one by one")
    args = parser.parse_args()
    records = torch.load(args.dump, weights_only=True)
    print(f"{len(records)} failed solves in {args.dump}")
    rows = []
    for r in records:
        g = r["gramian"].numpy()
        g = 0.5 * (g + g.T)  # formed as J J^T in float32: symmetric up to ~1e-6 relative
        scale = float(r["scale"])
        gn = g / scale
        a = r["alpha_t"].numpy()
        ga = gn @ a
        eig = np.linalg.eigvalsh(gn)
        c = ccp_objective(gn, scale, a)
        ray = unbounded_ray(gn, c) if np.all(np.isfinite(c)) else float("nan")
        clarabel = ccp_with("CLARABEL", gn, scale, a)
        tjd, kept = torchjd_status(g, r["alpha_prev"].numpy())
        exact = nash_bargaining_weights(gn, start=r["alpha_prev"].numpy())
        resid = float(np.max(np.abs(exact * (gn @ exact) - 1.0)))
        rows.append(
            {
                "step": r["step"],
                "iteration": r["iteration"],
                "status": r["status"],
                "min_ga": float(ga.min()),
                "neg": int((ga <= 0).sum()),
                "eig_min": float(eig[0]),
                "cond": float(eig[-1] / eig[0]) if eig[0] > 0 else float("inf"),
                "ray": ray,
                "clarabel": clarabel,
                "torchjd": tjd,
                "torchjd_kept": kept,
                "exact_resid": resid,
                "exact_min": float(exact.min()),
            }
        )
    header = (
        "| step | inner solve | ECOS status | min(G_n a) | #tasks (G_n a)_i<=0 | eig_min(G_n) "
        "| cond(G_n) | min c^T d (ray) | Clarabel status | torchjd status (start kept) "
        "| exact: max resid | exact: min a |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows[: args.rows]:
        print(
            f"| {row['step']} | {row['iteration']} | {row['status']} | {row['min_ga']:.3g} "
            f"| {row['neg']} | {row['eig_min']:.2e} | {row['cond']:.3g} | {row['ray']:.3g} "
            f"| {row['clarabel']} | {row['torchjd']} ({row['torchjd_kept']}) "
            f"| {row['exact_resid']:.1e} | {row['exact_min']:.3g} |"
        )
    if not rows:
        return
    n = len(rows)
    print()
    print(
        f"failures with some (G_n a)_i <= 0 at the linearisation point: "
        f"{sum(r['neg'] > 0 for r in rows)}/{n}"
    )
    print(f"failures with an unbounded ray (min c^T d < 0): {sum(r['ray'] < 0 for r in rows)}/{n}")
    print(f"Clarabel statuses: {sorted({r['clarabel'] for r in rows})}")
    print(
        f"torchjd: statuses {sorted({r['torchjd'] for r in rows})}, start kept silently in "
        f"{sum(r['torchjd_kept'] for r in rows)}/{n}"
    )
    print(
        f"exact solution: max residual {max(r['exact_resid'] for r in rows):.1e}, "
        f"min alpha {min(r['exact_min'] for r in rows):.3g}"
    )
    print(
        f"cond(G_n): median {statistics.median(r['cond'] for r in rows):.3g}, "
        f"max {max(r['cond'] for r in rows):.3g}"
    )


if __name__ == "__main__":
    main()
