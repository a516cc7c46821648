"""ROS 2 launch file for the inspection line (full ROS 2 installs):

    ros2 launch defect_perception line.launch.py [namespace:=/line] [config:=my_line.yaml]
        [nodes:=camera,inspector]

It starts the same node set with the same parameters as `defect-perception line`, because
both take them from defect_perception/line_spec.py (`plan_line`): nodes whose model or
module is missing are skipped with a logged reason, and config/line.yaml sections (keyed
by node name) are passed to each node as its parameters.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from defect_perception import line_spec
from launch import LaunchDescription


def _line_nodes(context, *args, **kwargs):
    share = get_package_share_directory(line_spec.PACKAGE)
    config = LaunchConfiguration("config").perform(context) \
        or os.path.join(share, line_spec.DEFAULT_PARAMS_FILE)
    namespace = LaunchConfiguration("namespace").perform(context)
    nodes = LaunchConfiguration("nodes").perform(context)
    plan = line_spec.plan_line(config, namespace, nodes.split(",") if nodes else None)
    actions = [LogInfo(msg=f"defect_perception: skipping {name}: {reason}") for name, reason in plan.skipped]
    actions += [LogInfo(msg=f"defect_perception: {note}") for note in plan.notes]
    for spec in plan.nodes:
        actions.append(Node(
            package=line_spec.PACKAGE,
            executable=spec.executable,
            name=spec.name,
            namespace=plan.namespace,
            parameters=[plan.params[spec.name]],
            output="screen",
            emulate_tty=True,
        ))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value=line_spec.DEFAULT_NAMESPACE,
                              description="namespace of the line"),
        DeclareLaunchArgument("config", default_value="",
                              description="parameter file (default: config/line.yaml in the package share)"),
        DeclareLaunchArgument("nodes", default_value="",
                              description="comma-separated nodes (default: every node that can run)"),
        OpaqueFunction(function=_line_nodes),
    ])
