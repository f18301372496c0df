"""pgvisor's supervised side: instance specs, the registry, and the instance runtime."""
from instances.notification import Notification

__all__ = ["Notification"]
