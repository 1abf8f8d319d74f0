"""Moved to tests/support/fence_lab.py; this name stays for the modules that still import
it (tests/unit/test_install_*). It holds no tests."""

from support.fence_lab import *  # noqa: F403
from support.fence_lab import HOST_KEY, Lab, agent_args, run_agent, start_lab, stop_lab

__all__ = ["HOST_KEY", "Lab", "agent_args", "run_agent", "start_lab", "stop_lab"]
