"""Rollouts: one release to a target set of devices in stages, advancing and stopping by itself."""
