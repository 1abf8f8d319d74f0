"""The web console (cockpit-kvmha) as a person sees it, on the 3-host lab.

cockpit-ws runs inside host1's namespaces with a local session (the bridge runs as root
in host1, so the page's `kvmha ...` commands run on host1, as on a real host); a small
TCP relay lets Debian's headless Chromium, driven by chromedriver through selenium, reach
it from this machine. The test reads the page as a person would (the cards, states and
dialogs) and checks it against the cluster and libvirt, never against the page's own
idea of things. A missing cockpit or chromium is a failure, not a skip.

Screenshots of the main views go to docs/console/ (referenced from docs/console.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmha.process import clean_env
from kvmha.tools.lab import power
from kvmha.tools.lab.lab import Lab

from .helpers import wait_for

pytestmark = pytest.mark.lab

COCKPIT_WS = "/usr/lib/cockpit/cockpit-ws"
COCKPIT_BRIDGE = "/usr/bin/cockpit-bridge"
CHROMEDRIVER = "/usr/bin/chromedriver"
PACKAGE = Path("/usr/share/cockpit/kvmha")
WS_PORT = 9090  # inside host1's network namespace
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
CLONE_NEWNET = 0x40000000

# Stated bounds (docs/console.md): the page polls `kvmha status --json` every 2 s
HOST_DOWN_SHOWN_S = 45  # power cut -> the page shows the host offline or fenced
GUEST_BACK_SHOWN_S = 120  # power cut -> the page shows the guest running on another host


def _setns_net(pid: int) -> None:
    """Move the calling thread (only it) into the network namespace of pid."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


class Relay:
    """127.0.0.1:port here -> 127.0.0.1:target_port in the network namespace of pid.

    Each connection's thread enters that namespace to connect (setns moves one thread)."""

    def __init__(self, pid: int, target_port: int) -> None:
        self.pid = pid
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            _setns_net(self.pid)
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop = True
        self.server.close()


class CockpitWs:
    """cockpit-ws with a local session inside a lab host (all of its namespaces)."""

    def __init__(self, lab: Lab, host: str, log: Path) -> None:
        pid = power.init_pid(lab.cfg, host)
        assert pid is not None, f"{host} is not powered"
        argv = [
            "nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "--wd=/", "--",
            COCKPIT_WS, "--no-tls", "--port", str(WS_PORT), "--address", "127.0.0.1",
            f"--local-session={COCKPIT_BRIDGE}",
        ]  # fmt: skip
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env({"HOME": "/root", "USER": "root"}),
                start_new_session=True,
            )
        self.relay = Relay(pid, WS_PORT)
        self.url = f"http://127.0.0.1:{self.relay.port}"

    def wait_ready(self) -> None:
        def answers() -> bool:
            assert self.proc.poll() is None, "cockpit-ws exited: " + self.log.read_text()[-2000:]
            try:
                with socket.create_connection(("127.0.0.1", self.relay.port), timeout=2) as s:
                    s.sendall(b"GET /cockpit/login HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    return s.recv(12).startswith(b"HTTP/1.")
            except OSError:
                return False

        wait_for("cockpit-ws to answer", answers, 30, 0.5)

    def stop(self) -> None:
        self.relay.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class Page:
    """Headless Chromium on the kvmha page inside Cockpit's shell."""

    FRAME = "cockpit1:localhost/kvmha"

    def __init__(self, url: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.driver.set_page_load_timeout(60)
        self.logs: list[dict[str, Any]] = []
        self.driver.get(f"{url}/kvmha")
        self._in_frame = False

    def frame(self) -> Any:
        """The driver, switched into the page's iframe."""
        d = self.driver
        if not self._in_frame:

            def find() -> Any:
                for f in d.find_elements("tag name", "iframe"):
                    if f.get_attribute("name") == self.FRAME and f.is_displayed():
                        return f
                return None

            d.switch_to.frame(wait_for("the kvmha frame in Cockpit's shell", find, 60))
            self._in_frame = True
        return d

    def shell(self) -> Any:
        if self._in_frame:
            self.driver.switch_to.default_content()
            self._in_frame = False
        return self.driver

    def attrs(self, css: str, *names: str) -> list[tuple[str, ...]]:
        """Attributes of every element matching css, read in one script (no stale nodes)."""
        return [
            tuple(row)
            for row in self.frame().execute_script(
                "return Array.from(document.querySelectorAll(arguments[0]))"
                ".map(e => arguments[1].map(n => e.getAttribute(n) || ''))",
                css,
                list(names),
            )
        ]

    def hosts(self) -> dict[str, str]:
        rows = self.attrs("[data-host][data-state]:not([data-guest])", "data-host", "data-state")
        return {h: s for h, s in rows}

    def guests(self) -> dict[str, tuple[str, str]]:
        rows = self.attrs("[data-guest][data-state]", "data-guest", "data-host", "data-state")
        return {g: (h, s) for g, h, s in rows}

    def text(self, css: str) -> str:
        """The visible text of every element matching css, read in one script: the page
        re-renders every few seconds, and an element found first and read later is stale."""
        return str(
            self.frame().execute_script(
                "return Array.from(document.querySelectorAll(arguments[0]))"
                ".map(e => e.innerText).join('\\n')",
                css,
            )
        )

    def click(self, css: str) -> None:
        """Click the element matching css; found again if a re-render replaced it."""
        from selenium.common.exceptions import StaleElementReferenceException

        def once() -> bool:
            try:
                self.frame().find_element("css selector", css).click()
            except StaleElementReferenceException:
                return False
            return True

        wait_for(f"a click on {css}", once, 10, 0.1)

    def screenshot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.shell().save_screenshot(str(SHOTS / name))

    def collect_logs(self) -> list[dict[str, Any]]:
        self.logs.extend(self.driver.get_log("browser"))
        return self.logs

    def close(self) -> None:
        self.driver.quit()


def cluster_guests(lab: Lab) -> dict[str, str | None]:
    st = lab.cluster_state()
    assert st is not None, "no host answers crm_mon"
    return {g: st.running_on(g) for g in lab.cfg.guest_names()}


def cluster_hosts(lab: Lab) -> dict[str, str]:
    st = lab.cluster_state()
    assert st is not None
    return {h: ("online" if st.nodes[h].online else "offline") for h in lab.cfg.host_names()}


def libvirt_running(lab: Lab, host: str) -> set[str]:
    r = lab.run_in(host, ["virsh", "-c", "qemu:///system", "list", "--name"], check=False)
    return {line.strip() for line in r.stdout.splitlines() if line.strip()}


def until(what: str, fn: Callable[[], Any], timeout: float, interval: float = 0.25) -> float:
    """wait_for, returning the seconds it took."""
    t0 = time.monotonic()
    wait_for(what, fn, timeout, interval)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def console(lab3: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Page]]:
    for path in (COCKPIT_WS, COCKPIT_BRIDGE, CHROMEDRIVER, "/usr/bin/chromium"):
        assert os.access(path, os.X_OK), f"{path} is missing: run scripts/setup.sh"
    assert (PACKAGE / "manifest.json").exists(), f"{PACKAGE} is not installed: run scripts/setup.sh"
    import selenium  # noqa: F401  (python3-selenium: a failure, not a skip)

    ws = CockpitWs(lab3, "host1", tmp_path_factory.mktemp("cockpit") / "cockpit-ws.log")
    page = None
    try:
        ws.wait_ready()
        page = Page(ws.url)
        yield lab3, page
    finally:
        if page is not None:
            page.close()
        ws.stop()


def test_page_shows_every_host_and_guest_as_the_cluster_has_them(
    console: tuple[Lab, Page],
) -> None:
    lab, page = console
    wait_for("every lab guest running", lambda: all(cluster_guests(lab).values()), 120, 1)
    until(
        "every host online on the page",
        lambda: page.hosts() == {h: "online" for h in lab.cfg.host_names()},
        60,
    )
    until(
        "every guest running on its host on the page",
        lambda: page.guests() == {g: (h, "running") for g, h in cluster_guests(lab).items()},
        30,
    )
    assert cluster_hosts(lab) == {h: "online" for h in lab.cfg.host_names()}
    # what a person reads: the words, not only the attributes
    for host in lab.cfg.host_names():
        card = page.text(f'article[data-host="{host}"]')
        assert host in card and "online" in card
    row = page.text('tr[data-guest="guest1"]')
    assert "guest1" in row and "running" in row
    # the plan: shown when `kvmha plan` exists, a clear "not available" otherwise
    helptext = lab.run_in("host1", ["kvmha", "--help"]).stdout.split("Commands:")[-1]
    has_plan = re.search(r"^\s+plan\s", helptext, re.M) is not None
    want = "ok" if has_plan else "unavailable"
    until("the plan section", lambda: page.attrs("#kv-plan", "data-plan") == [(want,)], 60)
    if not has_plan:
        assert "Not available" in page.text("#kv-plan")
    page.screenshot("overview.png")
    t0 = time.monotonic()
    lab.run_in("host1", ["kvmha", "status", "--json"])
    print(f"one 'kvmha status --json' on host1 (the page's poll): {time.monotonic() - t0:.2f} s")


def test_migrate_from_the_page_moves_the_guest_and_shows_progress(
    console: tuple[Lab, Page],
) -> None:
    lab, page = console
    guests = cluster_guests(lab)
    guest = "guest1"
    source = guests[guest]
    assert source is not None
    target = next(h for h in lab.cfg.host_names() if h != source)
    wait_for("guest1 ready", lambda: lab.guest_ready_since(guest, 0), 60)
    until(
        "the Migrate button",
        lambda: page.text(f'tr[data-guest="{guest}"] [data-action="migrate"]'),
        20,
    )
    page.click(f'tr[data-guest="{guest}"] [data-action="migrate"]')
    d = page.frame()
    assert "Migrate guest1?" in page.text("#kv-dialog-title")
    from selenium.webdriver.support.ui import Select

    Select(d.find_element("id", "kv-migrate-target")).select_by_value(target)
    page.click("#kv-dialog-ok")
    seen_states: set[str] = set()
    seen_progress: set[str] = set()

    def finished() -> bool:
        seen_states.update(s for g, (_h, s) in page.guests().items() if g == guest)
        seen_progress.update(p for (p,) in page.attrs("#kv-progress", "data-progress") if p)
        return bool(page.attrs("#kv-dialog-result[data-result]", "data-result"))

    took = until("the migration's result on the page", finished, 300, 0.1)
    result = page.attrs("#kv-dialog-result", "data-result")[0][0]
    assert result == "ok", page.text("#kv-dialog-result")
    assert f"{guest} migrated to {target}" in page.text("#kv-dialog-result")
    assert "migrating" in seen_states, seen_states
    assert "100" in {p.split(".")[0] for p in seen_progress}, seen_progress
    assert page.text("#kv-progress-text").startswith("100%")
    print(f"migrate from the page: result after {took:.1f} s, progress {sorted(seen_progress)}")
    page.screenshot("migrate.png")
    # libvirt, not the page, says where the guest runs
    assert guest in libvirt_running(lab, target)
    assert guest not in libvirt_running(lab, source)
    page.click("#kv-dialog-cancel")
    until(
        "the page shows guest1 on its new host",
        lambda: page.guests().get(guest) == (target, "running"),
        30,
    )


def test_power_cut_shows_on_the_page_and_the_guest_comes_back_elsewhere(
    console: tuple[Lab, Page],
) -> None:
    lab, page = console
    guests = cluster_guests(lab)
    victim = "host2"
    moved = sorted(g for g, h in guests.items() if h == victim)
    if not moved:  # put a guest there first, so that something has to recover
        r = lab.run_in("host1", ["kvmha", "guest", "migrate", "guest2", victim], timeout=300)
        assert r.returncode == 0, r.stderr
        moved = ["guest2"]
    try:
        t0 = time.monotonic()
        lab.power_cut(victim)
        down = until(
            f"{victim} offline or fenced on the page",
            lambda: page.hosts().get(victim) in ("offline", "unclean", "fenced"),
            HOST_DOWN_SHOWN_S,
            0.2,
        )
        fenced = until(
            f"{victim} fenced on the page",
            lambda: page.hosts().get(victim) == "fenced",
            GUEST_BACK_SHOWN_S,
            0.2,
        )

        def back_elsewhere() -> bool:
            shown = page.guests()
            return all(
                shown.get(g, ("", ""))[1] == "running" and shown[g][0] not in ("", victim)
                for g in moved
            )

        until(
            "the guests running on other hosts on the page", back_elsewhere, GUEST_BACK_SHOWN_S, 0.2
        )
        back = time.monotonic() - t0
        print(
            f"power cut of {victim}: page shows it down after {down:.1f} s, fenced after "
            f"{down + fenced:.1f} s, {','.join(moved)} running elsewhere after {back:.1f} s"
        )
        shown = page.guests()
        for g in moved:  # libvirt agrees with the page
            assert g in libvirt_running(lab, shown[g][0]), (g, shown[g])
        # the timeline: Pacemaker's fencing history and the guests' new starts
        until(
            "the fencing in the page's timeline",
            lambda: f"{victim} fenced" in page.text('[data-event-kind="fence"]'),
            30,
        )
        until(
            "the guests' new starts in the page's timeline",
            lambda: all(f"{g} started on" in page.text("#kv-events") for g in moved),
            30,
        )
        page.screenshot("power-cut.png")
        ev = lab.run_in("host1", ["kvmha", "events", "--json"])
        doc = json.loads(ev.stdout)
        assert doc["schema"] == "kvmha.events.v1"
        print(
            "kvmha events:",
            *(f"{e['time']} {e['kind']}: {e['message']}" for e in doc["events"]),
            sep="\n  ",
        )
        assert any(e["kind"] == "fence" and e["host"] == victim for e in doc["events"])
        refused_by_the_cli(lab, page, victim)
    finally:
        if not lab.powered(victim):
            lab.power_on(victim)
        until(f"{victim} online again", lambda: cluster_hosts(lab)[victim] == "online", 180, 1)


def refused_by_the_cli(lab: Lab, page: Page, offline_host: str) -> None:
    """A migration to a host that is down: the page shows the CLI's own refusal."""
    guest = "guest3"
    wait_for(f"{guest} running", lambda: cluster_guests(lab)[guest], 60)
    until(
        f"{guest}'s Migrate button",
        lambda: page.text(f'tr[data-guest="{guest}"] [data-action="migrate"]'),
        20,
    )
    where = cluster_guests(lab)[guest]
    page.click(f'tr[data-guest="{guest}"] [data-action="migrate"]')
    from selenium.webdriver.support.ui import Select

    Select(page.frame().find_element("id", "kv-migrate-target")).select_by_value(offline_host)
    page.click("#kv-dialog-ok")
    until(
        "the refusal on the page",
        lambda: page.attrs("#kv-dialog-result[data-result]", "data-result"),
        60,
    )
    assert page.attrs("#kv-dialog-result", "data-result") == [("error",)]
    cli = lab.run_in("host1", ["kvmha", "guest", "migrate", guest, offline_host], check=False)
    assert cli.returncode != 0
    first = cli.stderr.strip().splitlines()[0]
    assert first.startswith("kvmha: error: ") and offline_host in first, cli.stderr
    assert first in page.text("#kv-dialog-result")  # the CLI's own words, not the page's
    page.screenshot("refused.png")
    page.click("#kv-dialog-cancel")
    assert cluster_guests(lab)[guest] == where  # nothing moved


def test_the_page_logs_no_errors_of_its_own(console: tuple[Lab, Page]) -> None:
    _lab, page = console
    logs = page.collect_logs()
    ours = [
        e
        for e in logs
        if e.get("level") in ("SEVERE", "WARNING") and "/kvmha/" in e.get("message", "")
    ]
    assert not ours, ours
    assert shutil.which("chromium")  # the browser really ran (no stand-in)
