"""Starts skillgraft on a skill: ros2 launch skillgraft skillgraft.launch.py skill:=/path/to/skill"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("skill", description="Skill folder to run (skill.toml + policy.onnx)"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("skillgraft"), "launch", "params.yaml"]),
            description="ROS 2 parameter file for the node",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node"),
        DeclareLaunchArgument("node_name", default_value="skillgraft", description="Name of the node"),
        Node(
            package="skillgraft",
            executable="skillgraft",
            name=LaunchConfiguration("node_name"),
            namespace=LaunchConfiguration("namespace"),
            arguments=["run", LaunchConfiguration("skill")],
            parameters=[LaunchConfiguration("params_file")],
            output="screen",
        ),
    ])
