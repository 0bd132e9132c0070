"""bayesagg-mtl: BayesAgg-MTL (Achituve et al., ICML 2024) and multi-task baselines for PyTorch."""

from bayesagg.aggregation import aggregate
from bayesagg.bayes_agg import BayesAgg
from bayesagg.tasks import Binary, Multiclass, Regression

__all__ = ["BayesAgg", "Binary", "Multiclass", "Regression", "aggregate"]
__version__ = "0.1.0"
