"""Representation-level ("-UB") variants of the gradient aggregators, derived generically.

Sener & Koltun (2018, Sec. 3.3, Eq. 4-5) bound the parameter-space MGDA problem by the one on
the gradients w.r.t. the shared representation ``h`` [B, D]: the K x (B*D) Jacobian costs one
backward through the heads, and the combined direction [B, D] is pushed through the encoder
with one ``h.backward`` -- about one LS backward whatever K is. The trick does not depend on
MGDA: any :class:`~bayesagg.methods.base.Aggregator` can be applied to that Jacobian instead
of the K x P one (LibMTL's ``rep_grad`` does so for all its methods).

:func:`representation_variant` makes that variant of an aggregator class: a subclass that only
sets ``space = "representation"`` and its registry name, so
:meth:`Aggregator.backward <bayesagg.methods.base.Aggregator.backward>` differentiates w.r.t.
``h`` (per-example, flattened to B*D) and pushes the direction through the encoder. The
registry (:mod:`bayesagg.methods`) names these variants ``<method>-ub``.

Difference to LibMTL's ``rep_grad``: LibMTL sums the per-example gradients over the batch
first (a K x D problem); here the rows keep the per-example gradients (K x B*D), as the
BayesAgg-MTL paper's MGDA-UB / IMTL-G-UB / Aligned-MTL-UB baselines do. The Gramian, hence every
Gramian-based weighting, is then a sum over examples of per-example Gramians.
"""

from __future__ import annotations

from bayesagg.methods.base import Aggregator

__all__ = ["representation_variant"]

_CACHE: dict[tuple[type, str], type[Aggregator]] = {}


def representation_variant(cls: type[Aggregator], name: str) -> type[Aggregator]:
    """Return the subclass of aggregator ``cls`` that works on the representation's gradients.

    The subclass is named ``<cls>UB``, has registry name ``name`` and ``space =
    "representation"``; everything else (hyper-parameters, state, ``aggregate``) is inherited.
    The same class object is returned for the same ``(cls, name)``, and it is bound as an
    attribute of this module so that instances pickle once it has been created.
    """
    if not (isinstance(cls, type) and issubclass(cls, Aggregator)):
        raise TypeError(
            f"{cls!r} is not an Aggregator: only gradient aggregators have a -ub variant"
        )
    if cls.space != "parameters":
        raise ValueError(
            f"{cls.__name__} already works in {cls.space!r} space; its representation variant "
            "is itself"
        )
    if getattr(cls, "per_coordinate_state", False):
        raise ValueError(
            f"{cls.__name__} keeps state per coordinate of the Jacobian, which for the "
            "representation's per-example coordinates changes meaning from batch to batch"
        )
    key = (cls, name)
    if key not in _CACHE:
        qualname = f"{cls.__name__}UB"
        doc = (
            f"{cls.__name__} on the gradients w.r.t. the shared representation h [B, D] "
            "(Sener & Koltun 2018's upper-bound trick, per example, flattened to B*D); see "
            f":mod:`bayesagg.methods.representation` and :class:`{cls.__module__}.{cls.__name__}`."
        )
        variant = type(
            qualname,
            (cls,),
            {
                "name": name,
                "space": "representation",
                "__doc__": doc,
                "__module__": __name__,
            },
        )
        variant.__qualname__ = qualname
        globals()[qualname] = variant
        _CACHE[key] = variant
    return _CACHE[key]
