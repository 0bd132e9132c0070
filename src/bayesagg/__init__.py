"""bayesagg-mtl: BayesAgg-MTL (Achituve et al., ICML 2024) and multi-task baselines for PyTorch."""

from bayesagg.aggregation import aggregate
from bayesagg.tasks import Binary, Multiclass, Regression

__all__ = ["Binary", "Multiclass", "Regression", "aggregate"]
__version__ = "0.1.0"
