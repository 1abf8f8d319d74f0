"""fence_kvmha: fence a guest cluster member by having the host layer power its domain off.

Guest side: the Python standard library only, and no imports from the rest of kvmha, so
this one module can ship alone to guests (it holds the wire protocol too; the host-side
listener imports it from here).

Wire protocol ``kvmha-fence/1`` over TCP (default port 1230). Every message is a frame:
a 4-byte big-endian length, then that many bytes of UTF-8 JSON (an object).

1. client -> listener ``{"type": "hello", "proto": "kvmha-fence/1", "key": NAME, "nc": HEX}``
   (``nc``: 32 random bytes chosen by the client)
2. listener -> client ``{"type": "challenge", "ns": HEX}`` (32 random bytes of its own)
3. client -> listener ``{"type": "request", "body": {...}, "mac": HEX}`` where ``mac`` =
   HMAC-SHA256(key, transcript("client", NAME, nc, ns, canonical(body)))
4. listener -> client ``{"type": "response", "body": {...}, "mac": HEX}`` where ``mac`` =
   HMAC-SHA256(key, transcript("server", NAME, nc, ns, client mac, canonical(body)))

Both sides contribute a fresh nonce, so neither a request nor an answer can be replayed
into another exchange, and the client believes only an answer from someone who holds
the key. A listener that refuses before step 4 sends ``{"type": "refused", "reason":
...}``, which is unauthenticated and never counts as success.
"""

from __future__ import annotations

import getopt
import hashlib
import hmac
import json
import math
import os
import re
import socket
import stat
import struct
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

PROTOCOL = "kvmha-fence/1"
DEFAULT_PORT = 1230
DEFAULT_KEY_FILE = "/etc/cluster/kvmha-fence.key"
NONCE_BYTES = 32
MAX_REQUEST_FRAME = 4096  # what a listener accepts from anyone
MAX_RESPONSE_FRAME = 1 << 20  # a list answer can be long
KEY_NAME_RE = re.compile(r"[A-Za-z0-9@][A-Za-z0-9_.:@-]{0,63}\Z")  # \Z: no trailing newline
MAX_DEPTH = 16  # nesting of a frame's JSON: deeper is refused before parsing
MIN_SECRET_BYTES = 16

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_OFF = 2

Json = Dict[str, Any]


class ProtocolError(Exception):
    """The exchange failed: transport, framing, authentication or a refusal."""


class KeyFileError(Exception):
    """A key file is missing, malformed or readable by others."""


# ---- framing ----------------------------------------------------------------


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def encode_frame(obj: Json) -> bytes:
    data = canonical(obj)
    return struct.pack(">I", len(data)) + data


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProtocolError("timed out reading from the peer")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except socket.timeout as exc:
            raise ProtocolError("timed out reading from the peer") from exc
        except OSError as exc:
            raise ProtocolError(f"read failed: {exc}") from exc
        if not chunk:
            raise ProtocolError("connection closed by the peer" if not buf else "truncated frame")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket, limit: int, deadline: float) -> Json:
    (length,) = struct.unpack(">I", _recv_exact(sock, 4, deadline))
    if length > limit:
        raise ProtocolError(f"oversized frame ({length} bytes, limit {limit})")
    if length == 0:
        raise ProtocolError("empty frame")
    data = _recv_exact(sock, length, deadline)
    return parse_frame(data)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _too_deep(data: bytes) -> bool:
    """Nesting deeper than MAX_DEPTH (brackets outside strings), checked before parsing."""
    depth = 0
    in_str = esc = False
    for b in data:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:  # backslash
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif b in (0x5D, 0x7D):
            depth -= 1
    return False


def parse_frame(data: bytes) -> Json:
    """A frame's payload: a JSON object, finite numbers only, at most MAX_DEPTH deep."""
    if _too_deep(data):
        raise ProtocolError(f"malformed frame (nested deeper than {MAX_DEPTH})")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("malformed frame (not UTF-8 JSON with finite numbers)") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("malformed frame (not a JSON object)")
    return obj


def send_frame(sock: socket.socket, obj: Json, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ProtocolError("timed out writing to the peer")
    sock.settimeout(left)
    try:
        sock.sendall(encode_frame(obj))
    except OSError as exc:
        raise ProtocolError(f"write failed: {exc}") from exc


# ---- authentication ----------------------------------------------------------


def transcript(*parts: bytes) -> bytes:
    """Length-prefixed concatenation: no two different part lists give the same bytes."""
    out = [PROTOCOL.encode()]
    for p in parts:
        out.append(struct.pack(">I", len(p)))
        out.append(p)
    return b"".join(out)


def client_mac(secret: bytes, key: str, nc: bytes, ns: bytes, body: Json) -> bytes:
    msg = transcript(b"client", key.encode(), nc, ns, canonical(body))
    return hmac.new(secret, msg, hashlib.sha256).digest()


def server_mac(secret: bytes, key: str, nc: bytes, ns: bytes, cmac: bytes, body: Json) -> bytes:
    msg = transcript(b"server", key.encode(), nc, ns, cmac, canonical(body))
    return hmac.new(secret, msg, hashlib.sha256).digest()


def hex_field(msg: Json, name: str, size: int) -> bytes:
    value = msg.get(name)
    if not isinstance(value, str) or len(value) != 2 * size:
        raise ProtocolError(f"bad {name!r} field")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise ProtocolError(f"bad {name!r} field") from exc


# ---- key files ----------------------------------------------------------------


def check_key_mode(path: str) -> os.stat_result:
    """Key files must be regular files, owned by us or root, and not readable by others."""
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise KeyFileError(f"key file {path} does not exist") from exc
    except OSError as exc:
        raise KeyFileError(f"key file {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: group and others "
            f"must have no access (run: chmod 0600 {path})"
        )
    if st.st_uid not in (0, os.geteuid()):
        raise KeyFileError(f"key file {path} is owned by uid {st.st_uid}, not by root")
    return st


def parse_key_text(text: str, where: str) -> Dict[str, str]:
    """``name=...``, ``secret=<hex>`` and optional scope lines; ``#`` comments."""
    fields: Dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise KeyFileError(f"{where}: not a key=value line: {line[:40]!r}")
        k, v = line.split("=", 1)
        fields[k.strip()] = v.strip()
    name = fields.get("name", "")
    if not KEY_NAME_RE.match(name):
        raise KeyFileError(f"{where}: missing or invalid name=")
    try:
        secret = bytes.fromhex(fields.get("secret", ""))
    except ValueError as exc:
        raise KeyFileError(f"{where}: secret= is not hex") from exc
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyFileError(f"{where}: secret= is shorter than {MIN_SECRET_BYTES} bytes")
    return fields


class Key:
    """A named shared secret (a guest cluster's key, or the hosts' key)."""

    def __init__(self, name: str, secret: bytes, fields: Optional[Dict[str, str]] = None):
        self.name = name
        self.secret = secret
        self.fields = fields or {}

    @classmethod
    def load(cls, path: str) -> Key:
        check_key_mode(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(65536)
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc}") from exc
        fields = parse_key_text(text, path)
        return cls(fields["name"], bytes.fromhex(fields["secret"]), fields)


def key_text(name: str, secret: bytes, extra: Optional[Dict[str, str]] = None) -> str:
    lines = [f"# kvmha fence key {name!r}: keep it secret (mode 0600)", f"name={name}"]
    lines.append(f"secret={secret.hex()}")
    for k, v in (extra or {}).items():
        lines.append(f"{k}={v}")
    return "\n".join(lines) + "\n"


# ---- one exchange --------------------------------------------------------------


def exchange(
    address: str,
    port: int,
    key: Key,
    body: Json,
    connect_timeout: float,
    answer_timeout: float,
    answer_secret: Optional[bytes] = None,
) -> Json:
    """Authenticate, send one request, return the listener's authenticated answer body.

    answer_secret: the key the answer's MAC must be made with, when it is not the
    request's (host-to-host: each host answers with its own key)."""
    t0 = time.monotonic()
    try:
        sock = socket.create_connection((address, port), timeout=connect_timeout)
    except OSError as exc:
        raise ProtocolError(f"cannot connect to {address}:{port}: {exc}") from exc
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = t0 + connect_timeout + 5.0
        nc = os.urandom(NONCE_BYTES)
        send_frame(
            sock, {"type": "hello", "proto": PROTOCOL, "key": key.name, "nc": nc.hex()}, deadline
        )
        msg = read_frame(sock, MAX_RESPONSE_FRAME, deadline)
        if msg.get("type") == "refused":
            raise ProtocolError(f"refused: {str(msg.get('reason'))[:200]}")
        if msg.get("type") != "challenge":
            raise ProtocolError("unexpected answer to hello")
        ns = hex_field(msg, "ns", NONCE_BYTES)
        cmac = client_mac(key.secret, key.name, nc, ns, body)
        send_frame(sock, {"type": "request", "body": body, "mac": cmac.hex()}, deadline)
        msg = read_frame(sock, MAX_RESPONSE_FRAME, time.monotonic() + answer_timeout)
        if msg.get("type") == "refused":
            raise ProtocolError(f"refused: {str(msg.get('reason'))[:200]}")
        if msg.get("type") != "response" or not isinstance(msg.get("body"), dict):
            raise ProtocolError("unexpected answer to the request")
        smac = hex_field(msg, "mac", hashlib.sha256().digest_size)
        answer: Json = msg["body"]
        want = server_mac(answer_secret or key.secret, key.name, nc, ns, cmac, answer)
        if not hmac.compare_digest(smac, want):
            raise ProtocolError("the listener's answer does not carry a valid MAC")
        return answer


# ---- the fence agent -------------------------------------------------------------

# name: (getopt, long option, type, default, required, shortdesc)
OPTIONS: List[Tuple[str, str, str, str, Optional[str], bool, str]] = [
    ("action", "o", "action", "string", "reboot", True, "Fencing action"),
    ("plug", "n", "plug", "string", None, True, "Domain to fence (libvirt name or UUID)"),
    (
        "ip",
        "a",
        "ip",
        "string",
        None,
        True,
        "Listener addresses (ADDR or ADDR:PORT), comma separated, tried in turn",
    ),
    ("ipport", "u", "ipport", "integer", str(DEFAULT_PORT), False, "TCP port of the listeners"),
    (
        "key_file",
        "k",
        "key-file",
        "string",
        DEFAULT_KEY_FILE,
        False,
        "Key file of this guest cluster (mode 0600)",
    ),
    ("delay", "", "delay", "second", "0", False, "Wait X seconds before fencing is started"),
    (
        "power_timeout",
        "",
        "power-timeout",
        "second",
        "20",
        False,
        "Test X seconds for status change after ON/OFF",
    ),
    (
        "power_wait",
        "",
        "power-wait",
        "second",
        "0",
        False,
        "Wait X seconds after issuing ON/OFF",
    ),
    (
        "login_timeout",
        "",
        "login-timeout",
        "second",
        "5",
        False,
        "Wait X seconds for a listener to answer the connection and the handshake",
    ),
    ("verbose", "v", "verbose", "boolean", None, False, "Verbose mode"),
    ("debug_file", "D", "debug-file", "string", None, False, "Write debug information to file"),
    ("version", "V", "version", "boolean", None, False, "Display version information and exit"),
    ("help", "h", "help", "boolean", None, False, "Display help and exit"),
]
DEPRECATED = {"port": "plug", "ipaddr": "ip"}
ALIASES = {"port": "plug", "ipaddr": "ip", "option": "action"}
ACTIONS = [
    "on",
    "off",
    "reboot",
    "status",
    "list",
    "list-status",
    "monitor",
    "metadata",
    "manpage",
    "validate-all",
]
BOOLEAN_OPTS = {o[0] for o in OPTIONS if o[3] == "boolean"}
VERSION = "0.1.0"
LONGDESC = (
    "fence_kvmha fences a member of a cluster that runs inside KVM guests by asking the "
    "host layer to power its domain off. It connects to any of the kvmha-fence-listener "
    "daemons that run on every host (the addresses are tried in turn, so no host is a "
    "single point of failure), authenticates with this guest cluster's key "
    "(HMAC-SHA256 challenge-response with nonces from both sides) and may act only on "
    "the domains the key's scope allows. 'off' returns once the host that runs the "
    "domain has confirmed it is off, and the host cluster keeps it off. No multicast, "
    "and only the Python standard library inside the guest."
)


def _xml_escape(s: str) -> str:
    return (
        s.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
    )


PLACEHOLDERS = {"plug": "id", "ipport": "port", "key-file": "filename", "debug-file": "filename"}


def _getopt_mixed(short: str, long: str, typ: str) -> str:
    place = PLACEHOLDERS.get(long, "seconds" if typ == "second" else long)
    arg = "" if typ == "boolean" else f"=[{place}]"
    head = f"-{short}, " if short else ""
    return f"{head}--{long}{arg}"


def metadata() -> str:
    out = [
        '<?xml version="1.0" ?>',
        '<resource-agent name="fence_kvmha" '
        'shortdesc="Fence agent for guest clusters on kvmha hosts">',
        f"<longdesc>{_xml_escape(LONGDESC)}</longdesc>",
        "<vendor-url>https://github.com/kvmha/kvmha</vendor-url>",
        "<parameters>",
    ]

    def param(
        name: str,
        short: str,
        long: str,
        typ: str,
        default: Optional[str],
        req: bool,
        desc: str,
        extra: str = "",
    ) -> None:
        dflt = f' default="{_xml_escape(default)}"' if default is not None else ""
        out.append(f'\t<parameter name="{name}" unique="0" required="{int(req)}"{extra}>')
        out.append(f'\t\t<getopt mixed="{_xml_escape(_getopt_mixed(short, long, typ))}" />')
        out.append(f'\t\t<content type="{typ}"{dflt} />')
        out.append(f'\t\t<shortdesc lang="en">{_xml_escape(desc)}</shortdesc>')
        out.append("\t</parameter>")

    for name, short, long, typ, default, req, desc in OPTIONS:
        old = next((o for o, n in DEPRECATED.items() if n == name), None)
        if old:
            param(old, short, long, typ, default, False, desc, ' deprecated="1"')
            param(name, short, long, typ, default, req, desc, f' obsoletes="{old}"')
        else:
            param(name, short, long, typ, default, req, desc)
    out.append("</parameters>")
    out.append("<actions>")
    for a in ACTIONS:
        extra = ' automatic="0"' if a == "on" else ""
        out.append(f'\t<action name="{a}"{extra} />')
    out.append("</actions>")
    out.append("</resource-agent>")
    return "\n".join(out) + "\n"


def manpage() -> str:
    lines = [
        '.TH FENCE_KVMHA 8 "" "kvmha" "System Manager\'s Manual"',
        ".SH NAME",
        "fence_kvmha \\- fence a guest cluster member through the kvmha host layer",
        ".SH SYNOPSIS",
        ".B fence_kvmha",
        "[\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        LONGDESC.replace("-", "\\-"),
        ".P",
        "Options can be given on the command line or as key=value lines on stdin "
        "(what pacemaker\\-fenced sends).",
        ".SH OPTIONS",
    ]
    for name, short, long, typ, default, req, desc in OPTIONS:
        lines.append(".TP")
        lines.append(f"\\fB{_getopt_mixed(short, long, typ)}\\fR".replace("-", "\\-"))
        d = desc + (f" (default {default})" if default else "") + (" (required)" if req else "")
        lines.append(f"{d}. stdin name: {name}")
    lines += [
        ".SH ACTIONS",
        ".TP",
        "on, off, reboot, status, list, list\\-status, monitor, metadata, manpage, "
        "validate\\-all",
        ".SH EXIT STATUS",
        "0 success, 1 error, 2 status off.",
    ]
    return "\n".join(lines) + "\n"


def usage() -> str:
    """--help: plain text, as every fence-agents agent prints it (the troff is 'manpage')."""
    lines = ["Usage:", "\tfence_kvmha [options]", "Options:"]
    for _name, short, long, typ, default, _req, desc in OPTIONS:
        flag = _getopt_mixed(short, long, typ)
        d = desc + (f" (default {default})" if default else "")
        lines.append(f"   {flag:<32} {d}")
    lines += [
        "",
        "Options can also be given as key=value lines on stdin (what pacemaker-fenced sends).",
        "Actions: on, off, reboot, status, list, list-status, monitor, metadata, manpage, "
        "validate-all.",
        "Exit status: 0 success, 1 error, 2 status off.",
    ]
    return "\n".join(lines) + "\n"


class UsageFailure(Exception):
    pass


def split_address(entry: str, default_port: int) -> Tuple[str, int]:
    """``ADDR``, ``ADDR:PORT`` or ``[V6ADDR]:PORT``; a bare IPv6 address keeps the port."""
    entry = entry.strip()
    try:
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            return host, int(rest[1:]) if rest.startswith(":") else default_port
        if entry.count(":") == 1:
            host, port = entry.split(":")
            return host, int(port)
    except ValueError as exc:
        raise UsageFailure(f"bad listener address {entry!r}") from exc
    return entry, default_port


def _true(v: str) -> bool:
    return v.strip().lower() in ("1", "yes", "on", "true", "y", "t")


def parse_options(
    argv: List[str], stdin_text: Optional[str], debug: Callable[[str], None]
) -> Dict[str, str]:
    """Options from argv (getopt) or, without argv, from key=value lines on stdin."""
    opts: Dict[str, str] = {}
    if argv:
        shorts = ""
        longs = []
        by_flag: Dict[str, str] = {}
        for name, short, long, typ, _d, _r, _s in OPTIONS:
            arg = "" if typ == "boolean" else ":"
            if short:
                shorts += short + arg
                by_flag["-" + short] = name
            longs.append(long + ("" if typ == "boolean" else "="))
            by_flag["--" + long] = name
        longs += ["port=", "ipaddr="]
        by_flag["--port"] = "plug"
        by_flag["--ipaddr"] = "ip"
        try:
            pairs, rest = getopt.gnu_getopt(argv, shorts, longs)
        except getopt.GetoptError as exc:
            raise UsageFailure(str(exc)) from exc
        if rest:
            raise UsageFailure(f"unexpected arguments: {' '.join(rest)}")
        for flag, value in pairs:
            name = by_flag[flag]
            opts[name] = "1" if name in BOOLEAN_OPTS else value
    else:
        known = {o[0] for o in OPTIONS}
        for raw in (stdin_text or "").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                debug(f"ignoring stdin line without '=': {line[:60]!r}")
                continue
            k, v = line.split("=", 1)
            k = k.strip().replace("-", "_")
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
                v = v[1:-1]
            k = ALIASES.get(k, k)
            if k == "nodename":
                debug(f"ignoring nodename={v} (the target is plug)")
                continue
            if k not in known:
                debug(f"ignoring unknown option {k}")
                continue
            opts[k] = ("1" if _true(v) else "0") if k in BOOLEAN_OPTS else v
    for name, _s, _l, _t, default, _r, _d in OPTIONS:
        if default is not None:
            opts.setdefault(name, default)
    return opts


def _number(opts: Dict[str, str], name: str) -> float:
    try:
        value = float(opts[name])
    except (KeyError, ValueError) as exc:
        raise UsageFailure(f"{name} must be a number, not {opts.get(name)!r}") from exc
    if not math.isfinite(value) or value < 0 or value > 86400:
        raise UsageFailure(f"{name} {value} is out of range")
    return value


class Agent:
    def __init__(self, opts: Dict[str, str], out: Any, err: Any) -> None:
        self.opts = opts
        self.out = out
        self.err = err
        self.verbose = opts.get("verbose") == "1"
        self.debug_file = opts.get("debug_file")

    def debug(self, msg: str) -> None:
        line = f"fence_kvmha: debug: {msg}"
        if self.verbose:
            print(line, file=self.err)
        if self.debug_file:
            try:
                with open(self.debug_file, "a", encoding="utf-8") as f:
                    f.write(f"{time.strftime('%F %T')} {line}\n")
            except OSError:
                pass

    def fail(self, msg: str) -> int:
        print(f"fence_kvmha: error: {msg}", file=self.err)
        return EXIT_ERROR

    def addresses(self) -> List[str]:
        addrs = [a.strip() for a in self.opts.get("ip", "").split(",") if a.strip()]
        if not addrs:
            raise UsageFailure("no listener address: set ip (-a ADDR[,ADDR...])")
        return addrs

    def port(self) -> int:
        try:
            port = int(self.opts.get("ipport", str(DEFAULT_PORT)))
        except ValueError as exc:
            raise UsageFailure("ipport must be an integer") from exc
        if not 1 <= port <= 65535:
            raise UsageFailure(f"ipport {port} is out of range")
        return port

    def key(self) -> Key:
        try:
            return Key.load(self.opts.get("key_file", DEFAULT_KEY_FILE))
        except KeyFileError as exc:
            raise UsageFailure(str(exc)) from exc

    def ask(self, body: Json, answer_timeout: float) -> Json:
        """Send body to the listeners in turn; the first authenticated answer counts.

        A transport or protocol failure, or an authenticated 'error', moves on to the
        next address; an authenticated refusal ('denied') is final. When none succeeds,
        the error names every listener's failure, the listeners' own answers (which say
        which host could not be confirmed) before the ones that could not be reached.
        """
        key = self.key()
        port = self.port()
        login = _number(self.opts, "login_timeout") or 5.0
        answered: list[str] = []
        unreachable: list[str] = []
        for entry in self.addresses():
            addr, aport = split_address(entry, port)
            self.debug(f"asking {addr}:{aport}: {body}")
            try:
                answer = exchange(addr, aport, key, body, login, answer_timeout)
            except ProtocolError as exc:
                unreachable.append(f"{addr}: {exc}")
                self.debug(unreachable[-1])
                continue
            self.debug(f"{addr} answered {answer}")
            if answer.get("status") in ("ok", "denied"):
                return answer
            answered.append(f"{addr}: {str(answer.get('message', 'error'))[:400]}")
        failures = "; ".join(answered + unreachable) or "no listener tried"
        return {"status": "error", "message": f"no listener could do it: {failures}"}

    def run(self, action: str) -> int:
        if action == "metadata":
            self.out.write(metadata())
            return EXIT_OK
        if action == "manpage":
            self.out.write(manpage())
            return EXIT_OK
        if action not in ACTIONS:
            return self.fail(f"unknown action {action!r} (use one of {', '.join(ACTIONS)})")
        self.addresses()
        self.port()
        power_timeout = _number(self.opts, "power_timeout")
        power_wait = _number(self.opts, "power_wait")
        delay = _number(self.opts, "delay")
        if action == "validate-all":
            self.key()
            return EXIT_OK
        plug = self.opts.get("plug", "")
        if action in ("on", "off", "reboot", "status") and not plug:
            return self.fail("no plug: name the domain to fence (-n DOMAIN)")
        if action in ("off", "reboot") and delay > 0:
            self.debug(f"delay {delay:g} s")
            time.sleep(delay)
        body: Json = {"action": action if action != "list-status" else "list"}
        if action in ("on", "off", "reboot", "status"):
            body["plug"] = plug
        if action in ("on", "off", "reboot"):
            body["timeout"] = power_timeout or 20.0
        answer = self.ask(body, (power_timeout or 20.0) + 10.0)
        status = answer.get("status")
        message = str(answer.get("message", ""))
        if status != "ok":
            return self.fail(message or f"{action} failed")
        if action == "status":
            state = answer.get("state")
            print(f"Status: {'ON' if state == 'on' else 'OFF'}", file=self.out)
            return EXIT_OK if state == "on" else EXIT_OFF
        if action in ("list", "list-status"):
            for item in answer.get("plugs", []):
                if not isinstance(item, dict):
                    continue
                name, uuid, state = item.get("name"), item.get("uuid", ""), item.get("state")
                if action == "list":
                    print(f"{name},{uuid}", file=self.out)
                else:
                    print(f"{name},{uuid},{'ON' if state == 'on' else 'OFF'}", file=self.out)
            return EXIT_OK
        if action == "monitor":
            return EXIT_OK
        if power_wait > 0:
            time.sleep(power_wait)
        if answer.get("already"):
            print(f"Success: Already {'ON' if action == 'on' else 'OFF'}", file=self.out)
        else:
            done = {"on": "Powered ON", "off": "Powered OFF", "reboot": "Rebooted"}[action]
            print(f"Success: {done}", file=self.out)
        return EXIT_OK


def main(
    argv: Optional[List[str]] = None, stdin: Any = None, out: Any = None, err: Any = None
) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = out or sys.stdout
    err = err or sys.stderr
    debug_lines: List[str] = []
    try:
        text = None if argv else (stdin or sys.stdin).read(1 << 20)
        opts = parse_options(argv, text, debug_lines.append)
    except UsageFailure as exc:
        print(f"fence_kvmha: error: {exc}", file=err)
        return EXIT_ERROR
    if opts.get("help") == "1":
        out.write(usage())
        return EXIT_OK
    if opts.get("version") == "1":
        print(VERSION, file=out)
        return EXIT_OK
    agent = Agent(opts, out, err)
    for line in debug_lines:
        agent.debug(line)
    try:
        return agent.run(opts.get("action", "reboot"))
    except UsageFailure as exc:
        return agent.fail(str(exc))
    except KeyboardInterrupt:
        return agent.fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
