"""The onboard control loop: cameras, arms, the robot YAML, chunk strategies, safety, recording.

Kept light: import the submodules you need (`pi0edge.robot_io.loop.run_loop`,
`pi0edge.robot_io.config.load_robot_config`, ...); optional hardware libraries load on first use.
"""
