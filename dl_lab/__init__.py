"""dl_lab: a command-line experiment runner for small PyTorch MLP labs."""

__version__ = "0.1.0"
