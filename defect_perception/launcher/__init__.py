"""Running the line where `ros2 launch` is absent: process supervisor (supervisor.py),
in-process composition (composed.py), the launcher's monitor node (monitor.py, tally.py)
and command-line parameter values (values.py). The node set itself is in line_spec.py."""
