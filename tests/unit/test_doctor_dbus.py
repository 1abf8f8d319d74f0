"""kvmha doctor's systemd path against a real dbus-daemon on a private bus.

The fixture starts /usr/bin/dbus-daemon with a generated configuration (a unix socket in
a temporary directory, nothing else), and a fake systemd in a subprocess that owns
org.freedesktop.systemd1 on it: the Manager's GetUnit/LoadUnit and units with
org.freedesktop.DBus.Properties Get/GetAll, as systemd exports them. Both are stopped by
PID at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmha.process import module_argv
from kvmha.tools import doctor as d
from kvmha.tools.systemd import SystemdBus, SystemdError

pytest.importorskip("dbus")
pytest.importorskip("gi")

DBUS_DAEMON = shutil.which("dbus-daemon") or "/usr/bin/dbus-daemon"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

# A fake systemd: units from a JSON file. A unit with "loaded": false is only known to
# LoadUnit (systemd's GetUnit fails with NoSuchUnit for a unit not loaded yet); a name not
# in the file loads as LoadState not-found, like systemd does.
FAKE_SYSTEMD = r"""
import json, sys
import dbus, dbus.bus, dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

UNIT = "org.freedesktop.systemd1.Unit"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPS = "org.freedesktop.DBus.Properties"

address, units_file = sys.argv[1], sys.argv[2]
with open(units_file) as f:
    units = json.load(f)
DBusGMainLoop(set_as_default=True)
bus = dbus.bus.BusConnection(address)
exported = {}


class NoSuchUnit(dbus.exceptions.DBusException):
    _dbus_error_name = "org.freedesktop.systemd1.NoSuchUnit"


def unit_path(name):
    esc = "".join(c if c.isalnum() else "_%02x" % ord(c) for c in name)
    return "/org/freedesktop/systemd1/unit/" + esc


class Unit(dbus.service.Object):
    def __init__(self, name, props):
        super().__init__(bus, unit_path(name))
        self.props = {"Id": name, **props}

    @dbus.service.method(PROPS, in_signature="ss", out_signature="v")
    def Get(self, iface, prop):
        if iface != UNIT or prop not in self.props:
            raise dbus.exceptions.DBusException(
                "no such property", name="org.freedesktop.DBus.Error.UnknownProperty")
        return dbus.String(self.props[prop])

    @dbus.service.method(PROPS, in_signature="s", out_signature="a{sv}")
    def GetAll(self, iface):
        if iface != UNIT:
            return dbus.Dictionary({}, signature="sv")
        return dbus.Dictionary(
            {k: dbus.String(v) for k, v in self.props.items()}, signature="sv")


def load(name):
    if name not in exported:
        spec = dict(units.get(name, {
            "LoadState": "not-found", "ActiveState": "inactive", "SubState": "dead",
            "UnitFileState": ""}))
        spec.pop("loaded", None)
        exported[name] = Unit(name, spec)
    return dbus.ObjectPath(unit_path(name))


class Manager(dbus.service.Object):
    @dbus.service.method(MANAGER, in_signature="s", out_signature="o")
    def GetUnit(self, name):
        if name not in exported:
            raise NoSuchUnit("Unit %s not loaded." % name)
        return dbus.ObjectPath(unit_path(name))

    @dbus.service.method(MANAGER, in_signature="s", out_signature="o")
    def LoadUnit(self, name):
        return load(name)


for name, spec in units.items():
    if spec.get("loaded", True):
        load(name)
manager = Manager(bus, "/org/freedesktop/systemd1")
owner = dbus.service.BusName("org.freedesktop.systemd1", bus)
print("ready", flush=True)
GLib.MainLoop().run()
"""


def unit(active: str, sub: str, file_state: str, loaded: bool = True) -> dict[str, object]:
    return {
        "LoadState": "loaded",
        "ActiveState": active,
        "SubState": sub,
        "UnitFileState": file_state,
        "loaded": loaded,
    }


UNITS = {
    "corosync.service": unit("active", "running", "enabled"),
    "pacemaker.service": unit("inactive", "dead", "disabled"),
    # loaded only on demand: GetUnit fails, LoadUnit answers
    "kvmha-fence-listener.service": unit("active", "running", "disabled", loaded=False),
    # Debian's name for chrony; chronyd.service (RHEL's) is not installed here
    "chrony.service": unit("active", "running", "enabled"),
}


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def bus_address(tmp_path: Path) -> Iterator[str]:
    """A private dbus-daemon with a fake systemd on it; both stopped by PID afterwards."""
    if not os.access(DBUS_DAEMON, os.X_OK):
        pytest.fail(f"{DBUS_DAEMON} is missing: install the dbus-daemon package")
    sock = tmp_path / "bus"
    conf = tmp_path / "bus.conf"
    conf.write_text(BUS_CONFIG.format(socket=sock))
    daemon = subprocess.Popen(
        [DBUS_DAEMON, f"--config-file={conf}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    fake = None
    try:
        assert daemon.stdout is not None
        address = daemon.stdout.readline().strip()
        assert address.startswith("unix:path="), address
        units = tmp_path / "units.json"
        units.write_text(json.dumps(UNITS))
        script = tmp_path / "fake_systemd.py"
        script.write_text(FAKE_SYSTEMD)
        fake = subprocess.Popen(
            ["/usr/bin/python3", "-I", str(script), address, str(units)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert fake.stdout is not None
        assert fake.stdout.readline().strip() == "ready"
        yield address
    finally:
        if fake is not None:
            _stop(fake)
        _stop(daemon)


def test_unit_states_over_dbus(bus_address: str) -> None:
    with SystemdBus(bus_address, timeout=5) as bus:
        c = bus.unit("corosync.service")
        assert (c.found, c.active, c.enabled) == (True, True, True)
        assert c.sub_state == "running"
        p = bus.unit("pacemaker.service")
        assert (p.found, p.active, p.enabled) == (True, False, False)
        assert p.describe() == "pacemaker.service is inactive (dead), disabled"
        k = bus.unit("kvmha-fence-listener.service")  # GetUnit: NoSuchUnit, then LoadUnit
        assert (k.found, k.active, k.enabled) == (True, True, False)
        n = bus.unit("ntpd.service")
        assert not n.found and not n.active
        assert "not installed" in n.describe()


def test_unreachable_bus_is_a_systemd_error(tmp_path: Path) -> None:
    with pytest.raises(SystemdError, match="cannot connect"):
        SystemdBus(f"unix:path={tmp_path}/nobus")


def test_bus_without_systemd(bus_address: str, tmp_path: Path) -> None:
    # a second, empty bus: nobody owns org.freedesktop.systemd1 there
    sock = tmp_path / "empty"
    conf = tmp_path / "empty.conf"
    conf.write_text(BUS_CONFIG.format(socket=sock))
    daemon = subprocess.Popen(
        [DBUS_DAEMON, f"--config-file={conf}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        address = daemon.stdout.readline().strip()
        with pytest.raises(SystemdError, match="did not answer.*ServiceUnknown"):
            SystemdBus(address, timeout=2)
    finally:
        _stop(daemon)


def test_doctor_services_from_the_bus(bus_address: str, tmp_path: Path) -> None:
    conf = tmp_path / "listener.conf"
    conf.write_text("[listener]\nhost = host1\n")
    (tmp_path / "hosts.key").write_text("name=@hosts\nsecret=00\n")
    opts = d.Options(bus_address=bus_address, listener_conf=str(conf), timeout=5)
    ctx = d.Context(opts)
    findings = d.run_checks(ctx, d.select_checks(only=["services", "timesync"]))
    got = {f.code: f for f in findings}
    assert got["systemd"].severity == d.OK and bus_address in got["systemd"].message
    assert got["corosync"].severity == d.OK
    assert got["corosync"].message == "corosync.service is active (running), enabled"
    assert got["pacemaker-stopped"].severity == d.ERROR
    assert "inactive (dead), disabled" in got["pacemaker-stopped"].message
    assert got["pacemaker-stopped"].fix.startswith("pcs cluster start")
    assert got["kvmha-fence-listener-not-enabled"].severity == d.WARNING
    assert got["kvmha-fence-listener-not-enabled"].fix == "systemctl enable kvmha-fence-listener"
    assert got["timesync"].message == "chrony.service is active (running), enabled"
    assert ctx.services_kind == "systemd"


def test_kvmha_doctor_command_on_the_bus(bus_address: str) -> None:
    """The command an admin runs (as a separate process), reading the private bus."""
    t0 = time.monotonic()
    r = subprocess.run(
        [
            *module_argv("kvmha.tools.doctor_cli"),
            "--bus-address",
            bus_address,
            "--only",
            "services",
            "--only",
            "timesync",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2, r.stderr  # pacemaker is stopped: an error
    doc = json.loads(r.stdout)
    assert doc["services_from"] == "systemd"
    by_code = {f["code"]: f for f in doc["findings"]}
    assert by_code["corosync"]["severity"] == "ok"
    assert by_code["pacemaker-stopped"]["severity"] == "error"
    assert by_code["timesync"]["severity"] == "ok"
    assert doc["summary"]["error"] >= 1
    assert time.monotonic() - t0 < 30


def test_kvmha_doctor_command_with_no_bus(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            *module_argv("kvmha.tools.doctor_cli"),
            "--bus-address",
            f"unix:path={tmp_path}/x",
            "--only",
            "services",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    doc = json.loads(r.stdout)
    assert doc["findings"][0]["code"] == "systemd-unreachable"
    assert doc["services_from"] == "processes"  # it fell back, and said so
    assert r.returncode == 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
