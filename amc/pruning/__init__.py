"""Pruning: structured channel pruning and fine-grained (unstructured) magnitude pruning."""

from amc.pruning.finegrained import (
    PRUNABLE_TYPES,
    FineGrainedConfig,
    MagnitudePruner,
    SparsityReport,
    export_sparse,
    load_sparse,
    prunable_weights,
    sparsity,
    stored_size,
)

__all__ = [
    "PRUNABLE_TYPES",
    "FineGrainedConfig",
    "MagnitudePruner",
    "SparsityReport",
    "export_sparse",
    "load_sparse",
    "prunable_weights",
    "sparsity",
    "stored_size",
]
