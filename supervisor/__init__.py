"""pgvisor's supervising side: the Supervisor and everything that runs it."""
