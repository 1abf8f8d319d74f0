"""The lab's power switch: one daemon on the machine, outside every host.

It alone turns hosts on and off. Hosts reach it through a unix socket in the lab
directory (visible at the same path inside every host); the host cluster's fence agent
(fence_kvmhalab) and ``kvmha lab power-cut/power-on`` both talk to it, and every action
is written to ``power/events.jsonl``.

Protocol: one request line ``ACTION HOST ORIGIN`` (ORIGIN is a free word such as
``fence`` or ``admin``), one answer line ``OK STATE`` or ``ERR MESSAGE``.
ACTION is on, off, reboot, status or list (list ignores HOST and answers
``OK host1=on,host2=off``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

from kvmha.process import module_argv, pid_alive, signal_pid
from kvmha.tools.lab.config import LabConfig

MAX_LINE = 256


class PowerError(Exception):
    pass


def pid_file(cfg: LabConfig, host: str) -> Path:
    return cfg.run_dir / f"{host}.pid"


def init_pid(cfg: LabConfig, host: str) -> int | None:
    try:
        return int(pid_file(cfg, host).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_on(cfg: LabConfig, host: str) -> bool:
    pid = init_pid(cfg, host)
    return pid is not None and pid_alive(pid)


def netns_pids(netns: str) -> list[int]:
    r = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False, timeout=10
    )
    return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []


def boot_host(cfg: LabConfig, host: str) -> int:
    r = subprocess.run(
        module_argv("kvmha.tools.lab.hostinit", "boot", str(cfg.labdir), host),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if r.returncode != 0 or not r.stdout.strip().isdigit():
        raise PowerError(f"could not boot {host}: {r.stderr.strip() or r.stdout.strip()}")
    pid = int(r.stdout.strip())
    pid_file(cfg, host).write_text(f"{pid}\n")
    return pid


def cut_power(cfg: LabConfig, host: str, seconds: float = 15.0) -> None:
    """SIGKILL the host's init, then wait until nothing of the host runs any more."""
    pid = init_pid(cfg, host)
    if pid is not None and pid_alive(pid):
        signal_pid(pid, signal.SIGKILL)
    deadline = time.monotonic() + seconds
    ns = cfg.host_netns(host)
    while time.monotonic() < deadline:
        left = [p for p in netns_pids(ns) if pid_alive(p)]
        if (pid is None or not pid_alive(pid)) and not left:
            return
        time.sleep(0.02)
    raise PowerError(f"{host} still has processes {seconds:.0f} s after its power was cut")


class PowerSwitch:
    def __init__(self, cfg: LabConfig) -> None:
        self.cfg = cfg
        self.locks = {h: threading.Lock() for h in cfg.host_names()}
        self.log_lock = threading.Lock()

    def event(self, action: str, host: str, origin: str, result: str, t0: float) -> None:
        rec = {
            "t": t0,
            "done": time.time(),
            "action": action,
            "host": host,
            "origin": origin,
            "result": result,
        }
        with self.log_lock, open(self.cfg.pdu_dir / "events.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    def handle(self, line: str) -> str:
        parts = line.split()
        if len(parts) != 3:
            return "ERR expected: ACTION HOST ORIGIN"
        action, host, origin = parts
        if action == "list":
            return "OK " + ",".join(
                f"{h}={'on' if is_on(self.cfg, h) else 'off'}" for h in self.cfg.host_names()
            )
        if host not in self.locks:
            return f"ERR unknown host {host}"
        if action not in ("on", "off", "reboot", "status"):
            return f"ERR unknown action {action}"
        with self.locks[host]:
            if action == "status":
                return "OK on" if is_on(self.cfg, host) else "OK off"
            t0 = time.time()
            try:
                if action in ("off", "reboot"):
                    cut_power(self.cfg, host)
                if action in ("on", "reboot") and not is_on(self.cfg, host):
                    boot_host(self.cfg, host)
            except PowerError as exc:
                self.event(action, host, origin, f"error: {exc}", t0)
                return f"ERR {exc}"
            self.event(action, host, origin, "ok", t0)
            return "OK on" if is_on(self.cfg, host) else "OK off"


def serve(cfg: LabConfig, handle_sigterm: bool = True) -> None:
    switch = PowerSwitch(cfg)
    sock_path = cfg.pdu_socket
    # bound under a temporary name and renamed once listening: the socket's existence
    # means the switch answers
    tmp_path = sock_path.with_suffix(".new")
    for p in (sock_path, tmp_path):
        p.unlink(missing_ok=True)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(10)
            try:
                line = self.rfile.readline(MAX_LINE).decode("ascii", "replace").strip()
            except OSError:
                return
            answer = switch.handle(line)
            self.wfile.write((answer + "\n").encode())

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    with Server(str(tmp_path), Handler) as server:
        os.chmod(tmp_path, 0o600)
        os.replace(tmp_path, sock_path)
        if handle_sigterm:
            signal.signal(
                signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start()
            )
        server.serve_forever(poll_interval=0.2)


def request(
    sock_path: Path | str, action: str, host: str, origin: str, timeout: float = 60.0
) -> str:
    """Ask the power switch; returns the state word, raises PowerError on ERR."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(sock_path))
        except OSError as exc:
            raise PowerError(f"the lab power switch does not answer at {sock_path}: {exc}") from exc
        s.sendall(f"{action} {host} {origin}\n".encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    answer = data.decode("ascii", "replace").strip()
    if answer.startswith("OK "):
        return answer[3:]
    raise PowerError(answer[4:] if answer.startswith("ERR ") else f"bad answer {answer!r}")


if __name__ == "__main__":
    lab = LabConfig.load(Path(sys.argv[1]))
    if lab is None:
        raise SystemExit(f"no lab in {sys.argv[1]}")
    serve(lab)
