"""amc-pruner: reinforcement-learning AutoML channel pruning (AMC) for CNNs.

>>> import amc
>>> result = amc.search(model, example_inputs, amc.classification_evaluator(val_loader))
>>> small = amc.prune(model, result.policy, calibration=train_loader)
>>> amc.export_onnx(small, example_inputs, "small.onnx")  # needs the onnx extra

The Python entry points (:mod:`amc.api`) are imported on first use, so ``import amc`` and the
lightweight sub-packages do not load the reinforcement-learning stack.
"""

__version__ = "0.1.0"
__all__ = [
    "Budget",
    "Policy",
    "SearchResult",
    "classification_evaluator",
    "export_onnx",
    "prune",
    "search",
]

_EXPORTS = {
    "search": "amc.api",
    "prune": "amc.api",
    "classification_evaluator": "amc.api",
    "SearchResult": "amc.api",
    "Budget": "amc.budget",
    "Policy": "amc.policy",
    "export_onnx": "amc.export",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'amc' has no attribute '{name}'")
