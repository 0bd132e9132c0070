"""Loss-weighting methods: each sets the gradient of a weighted sum of the task losses.

Every class follows :class:`bayesagg.methods.base.Method`; build them by name with
``bayesagg.methods.create("famo", num_tasks=K)``. All depend on torch only.
"""

from bayesagg.methods.weighting.db_mtl import DBMTL
from bayesagg.methods.weighting.dwa import DynamicWeightAverage
from bayesagg.methods.weighting.famo import FAMO
from bayesagg.methods.weighting.gradnorm import GradNorm
from bayesagg.methods.weighting.igbv2 import IGBv2
from bayesagg.methods.weighting.ls import LinearScalarization
from bayesagg.methods.weighting.rlw import RandomLossWeighting
from bayesagg.methods.weighting.si import ScaleInvariant
from bayesagg.methods.weighting.stl import SingleTask
from bayesagg.methods.weighting.uw import UncertaintyWeighting
from bayesagg.methods.weighting.uw_so import SoftOptimalUncertaintyWeighting

__all__ = [
    "DBMTL",
    "FAMO",
    "DynamicWeightAverage",
    "GradNorm",
    "IGBv2",
    "LinearScalarization",
    "RandomLossWeighting",
    "ScaleInvariant",
    "SingleTask",
    "SoftOptimalUncertaintyWeighting",
    "UncertaintyWeighting",
]
