"""The paper's benchmarks: one folder each with its data loader, model and protocol."""
