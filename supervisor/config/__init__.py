"""The service's configuration (docs/configuration.rst).

Public: :func:`load_config`, :class:`Config` and :func:`settings_help`. The parts:
``settings`` (the table of every setting: section, key, default, unit, check),
``loader`` (one load, layer by layer: default < file < ``PGVISOR_*`` < flags),
``model`` (the frozen :class:`Config`) and ``reload`` (what a SIGHUP changes live).
"""
from supervisor.config.model import Config, load_config, settings_help

__all__ = ["Config", "load_config", "settings_help"]
