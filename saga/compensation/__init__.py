"""Compensation: which started steps to undo, in what order (`order`), and the plan (`plan`)."""

from saga.compensation.order import finished, needs_compensation, ready
from saga.compensation.plan import begin, plan

__all__ = ["begin", "plan", "ready", "finished", "needs_compensation"]
