"""Training: the engine (one model or a stack of them), CUDA graphs, diagnostics, the device and the
environment. Returns typed results (training.results); writes no files and draws nothing."""
