"""An operator's story through the real CLI: an instance whose handler cannot be imported
is parked ``disabled_by_supervisor`` (no restart budget burnt on a loop); the fix is
deployed; ``pgvisor instances enable NAME`` (an edit of the registry file, the instance
being enabled already) reaches the running service and the instance runs."""
import os

import pytest

from tests.acceptance.service_process import ServiceProcess, environ

LATE_MODULE = "pgvisor_late_handler_%d" % os.getpid()


@pytest.mark.timeout(90)
def test_enable_through_the_cli_unparks_an_instance_once_its_handler_is_deployed(
        pg_dsn, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    svc = ServiceProcess(tmp_path, {
        "database": {"dsn": pg_dsn},
        "supervisor": {"interval": 3600.0, "probe_interval": 0.2},
    }, env={"PYTHONPATH": environ(tmp_path)["PYTHONPATH"] + os.pathsep + str(code)})
    added = svc.cli("instances", "add", "late", "-c", svc.config, "--channel", "late_ch",
                    "--handler", LATE_MODULE + ":handle")
    assert added.returncode == 0, added.stderr
    try:
        svc.start()
        svc.wait_state("late", "disabled_by_supervisor")
        reason = svc.status()["late"]["parked_reason"]
        assert "cannot import module %r" % LATE_MODULE in reason
        (code / (LATE_MODULE + ".py")).write_text("def handle(notification):\n    pass\n")
        enabled = svc.cli("instances", "enable", "late", "-c", svc.config)
        assert enabled.returncode == 0, enabled.stderr
        svc.wait_state("late", "running")
    finally:
        svc.stop()
