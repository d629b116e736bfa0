"""amc-pruner: reinforcement-learning AutoML channel pruning (AMC) for CNNs."""

__version__ = "0.1.0"
