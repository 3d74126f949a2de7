"""Simulation: a whole federation on one machine, and partitioners for simulated sites."""

from fedcare.sim.simulator import simulate

__all__ = ["simulate"]
