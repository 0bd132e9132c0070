"""Gradient aggregators: each combines the task gradients (a K x P Jacobian) into one direction."""
