"""Small runnable examples: ``python -m bayesagg.examples.synthetic``."""
