"""Errors shared by the node, the ROS-free per-frame step and the replay tools. Imports no ROS."""


class ConfigError(ValueError):
    """A parameter, argument or file the configuration names is missing or invalid; the message says which and
    what to do."""
