"""The robot bridge: the ROS-agnostic core (safety filter, scheduler, watchdog) and the nodes that wrap it."""
