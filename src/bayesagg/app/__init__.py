"""The application layer: the ``bayesagg`` command and what it writes for people.

:mod:`bayesagg.app.cli` (the command line), :mod:`bayesagg.app.report` (``report.md`` and the
one-run summaries), :mod:`bayesagg.app.summary` (paired differences to LS, RESULTS.md) and
:mod:`bayesagg.app.demo` (the QM9 demo). They sit above the runner (:mod:`bayesagg.runner`)
and import only downwards: the runner, the benchmarks and the library never import them.
"""
