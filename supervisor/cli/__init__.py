"""The ``pgvisor`` command line (docs/cli.rst): :func:`main`, the console script's entry.

:func:`main` monkey-patches first (docs/cli.rst: before anything else is imported), then
imports the rest. This ``__init__`` imports nothing itself, so importing
any part of the package (``supervisor.cli.output``, say) patches nothing. The parts:
``parser`` (the top-level parser and dispatch, the demo and piper delegates), one module
per command group, each registering its own subcommands (``service``: run; ``control``:
restart, verify, shutdown, status; ``instances``: the registry verbs; ``queue``: spool
queues), ``options`` (the flags groups share, loading the config), ``output`` (printing
and exit codes) and ``api`` (the HTTP API client).

Exit codes: 0 ok, 1 operation failed, 2 usage or configuration error, 3 service
unreachable, 4 unknown instance. Only :func:`main` turns an outcome into the process's
exit status (the console script, or ``python -m supervisor.cli``, exits with it).
"""


def main(argv=None):
    """Patch, then run the ``pgvisor`` command of ``argv`` (default: ``sys.argv[1:]``);
    return the exit code."""
    from gevent import monkey
    monkey.patch_all()
    from supervisor.cli.parser import run
    return run(argv)
