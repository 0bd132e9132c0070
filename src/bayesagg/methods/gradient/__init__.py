"""Gradient aggregators: each combines the task gradients (a K x P Jacobian) into one direction.

One module per method, imported by the registry only when created: ``mgda`` (MGDA,
MGDA-UB), ``pcgrad``, ``cagrad``, ``imtl`` (IMTL-G, IMTL-G-UB), ``nash_mtl``, ``aligned_mtl``
(Aligned-MTL, Aligned-MTL-UB), ``upgrad``, ``graddrop``, ``gradvac``; ``_min_norm`` is the
Frank-Wolfe min-norm solver. See docs/methods-gradient.md.
"""
