"""Tests for etc/otad.service: systemd's own checks of the unit (offline) and what the daemon relies on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from twisted.trial import unittest

UNIT = Path(__file__).resolve().parent.parent / "etc" / "otad.service"
MAX_EXPOSURE = 2.5
# Where the host's systemd keeps its unit files (one of them; on merged-/usr systems both are the same).
HOST_UNIT_DIRS = ("/usr/lib/systemd/system", "/lib/systemd/system")
_OVERALL = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")
_EXEC = re.compile(r"^Exec\w+=[-@:+!|]*(/\S+)", re.MULTILINE)


def _settings(text: str) -> dict[tuple[str, str], list[str]]:
    """The unit's assignments, {(section, key): [values, in order]}; comments and blank lines skipped."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


class UnitFileTests(unittest.TestCase):
    def analyze(self, *args: str) -> subprocess.CompletedProcess[str]:
        executable = shutil.which("systemd-analyze")
        if executable is None:
            self.fail("systemd-analyze is missing: install the systemd package (apt-get install systemd)")
        environment = dict(os.environ, SYSTEMD_COLORS="0", LC_ALL="C.UTF-8")
        return subprocess.run([executable, "--no-pager", *args], capture_output=True, text=True, timeout=120, env=environment, check=False)

    def fake_root(self) -> Path:
        """A file system root for ``verify --root``: the host's unit files, the unit, and its commands as stubs.

        ``verify`` insists that every Exec command exists and is executable, and /opt/otad is not
        installed where the tests run; under --root it looks for both units and commands in the tree.
        """
        root = Path(self.mktemp()).resolve()
        host_units = next((Path(d) for d in HOST_UNIT_DIRS if Path(d, "sysinit.target").is_file()), None)
        if host_units is None:
            self.fail(f"no systemd unit files in {' or '.join(HOST_UNIT_DIRS)}: install the systemd package")
        shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
        (root / "etc/systemd/system").mkdir(parents=True)
        shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
        for command in set(_EXEC.findall(UNIT.read_text())):
            stub = root / command.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
        return root

    def test_security_exposure(self) -> None:
        """systemd-analyze security --offline=yes rates the unit's sandbox at an exposure of 2.5 or lower."""
        result = self.analyze("security", "--offline=yes", str(UNIT))
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        found = _OVERALL.search(output)
        if found is None:
            self.fail(f"no overall exposure level in the output of systemd-analyze security:\n{output}")
        exposure = float(found.group(1))
        failing = "\n".join(line for line in result.stdout.splitlines() if line.startswith("✗"))
        self.assertLessEqual(exposure, MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}; what counts:\n{failing}")

    def test_verify(self) -> None:
        """systemd-analyze verify --root=TREE accepts the unit: exit status 0 and not one warning about it.

        TREE holds the host's unit files, the unit in etc/systemd/system and stub executables at
        the paths of its Exec commands (/opt/otad/bin/twistd, /bin/kill). Verify reports unknown
        keys and bad values only as warnings, with exit status 0, so any line naming the unit fails.
        """
        result = self.analyze("verify", f"--root={self.fake_root()}", UNIT.name)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        self.assertEqual([line for line in output.splitlines() if UNIT.name in line], [], output)

    def test_daemon_contract(self) -> None:
        """The unit keeps what the daemon relies on: READY=1 from the main process, reload by SIGHUP, restart on failure."""
        settings = _settings(UNIT.read_text())
        self.assertEqual(settings.get(("Service", "Type")), ["notify"])
        self.assertEqual(settings.get(("Service", "NotifyAccess")), ["main"])
        self.assertEqual(settings.get(("Service", "ExecReload")), ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(settings.get(("Service", "Restart")), ["on-failure"])
        self.assertEqual(settings.get(("Service", "DynamicUser")), ["yes"])
        self.assertEqual(settings.get(("Service", "StateDirectory")), ["otad"])
        (start,) = settings[("Service", "ExecStart")]
        self.assertTrue(start.startswith("/opt/otad/bin/twistd --nodaemon --pidfile= --logfile=- otad "), start)
        # The notification socket is AF_UNIX; without it READY=1 never arrives and the start times out.
        (families,) = settings[("Service", "RestrictAddressFamilies")]
        self.assertIn("AF_UNIX", families.split())
