"""pgvisor's supervising side: the Supervisor and everything that runs it.

``from supervisor import Supervisor, get_current, set_current`` (DESIGN.md's contract).
"""
from supervisor.actor import Supervisor
from supervisor.client import Client
from supervisor.current import get_current, set_current

__all__ = ["Supervisor", "Client", "get_current", "set_current"]
