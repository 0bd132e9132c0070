"""Loss-weighting methods: each sets the gradient of a weighted sum of the task losses."""
