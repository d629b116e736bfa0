"""Stable-baselines3 agents of amc-pruner (installed as ``amc.agents``)."""
