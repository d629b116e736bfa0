"""Gymnasium environments of amc-pruner (installed as ``amc.envs``)."""
