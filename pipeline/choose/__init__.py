"""Choosing a model: run folders side by side (`compare`: table, Pareto front) and the sweep over
candidates with the budget pick (`sweep`); both measured on the device itself through its agent (`device`).

May import: the stages and the run folder before it; never the CLI.
"""
