"""pgvisor's supervised side: instance specs, the registry, and the instance runtime."""
from instances.notification import Notification
from instances.registry import Registry
from instances.spec import InstanceSpec

__all__ = ["InstanceSpec", "Notification", "Registry"]
