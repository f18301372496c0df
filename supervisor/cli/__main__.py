"""``python -m supervisor.cli``: the ``pgvisor`` command."""
import sys

from supervisor.cli import main

sys.exit(main())
