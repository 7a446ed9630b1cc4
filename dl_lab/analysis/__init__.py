"""Analysis of finished runs: loading them, statistics, tables, expectations and plots. Torch-free."""
