"""Offline replay evaluation (ROS-free): join the line's decisions with ground-truth labels,
score them with confidence intervals, sweep thresholds from stored raw scores, compare two
runs and write an HTML + JSON shift report. The ROS side (starting the line, collecting the
messages) lives in `defect_perception.commands.evaluate_line`."""


class EvaluationError(RuntimeError):
    """An evaluation input that cannot give a trustworthy report; the message names it."""
