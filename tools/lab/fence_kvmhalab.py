"""fence_kvmhalab: the lab host cluster's fence agent; it asks the lab power switch.

Follows the fence-agents calling convention: options as key=value lines on stdin (what
pacemaker-fenced sends) or on the command line (-o ACTION -n HOST [--socket PATH]).
"""

from __future__ import annotations

import sys

from kvmha.tools.lab import power

DEFAULT_SOCKET = "/var/lib/kvmha-lab/power/pdu.sock"

METADATA = """<?xml version="1.0" ?>
<resource-agent name="fence_kvmhalab" shortdesc="Power switch of the kvmha lab">
<longdesc>Fences a kvmha lab host by asking the lab's power switch to cut its power
(the host's init and every process in its namespaces are killed). Only for the
'kvmha lab' test cluster.</longdesc>
<vendor-url>https://github.com/kvmha/kvmha</vendor-url>
<parameters>
  <parameter name="action" unique="0" required="1">
    <getopt mixed="-o, --action=[action]"/>
    <content type="string" default="reboot"/>
    <shortdesc lang="en">Fencing action</shortdesc>
  </parameter>
  <parameter name="plug" unique="0" required="1" obsoletes="port">
    <getopt mixed="-n, --plug=[host]"/>
    <content type="string"/>
    <shortdesc lang="en">Lab host to fence (host1 ... host5)</shortdesc>
  </parameter>
  <parameter name="port" unique="0" required="0" deprecated="1">
    <getopt mixed="-n, --plug=[host]"/>
    <content type="string"/>
    <shortdesc lang="en">Lab host to fence</shortdesc>
  </parameter>
  <parameter name="socket" unique="0" required="0">
    <getopt mixed="--socket=[path]"/>
    <content type="string" default="/var/lib/kvmha-lab/power/pdu.sock"/>
    <shortdesc lang="en">Unix socket of the lab power switch</shortdesc>
  </parameter>
</parameters>
<actions>
  <action name="on" automatic="0"/>
  <action name="off"/>
  <action name="reboot"/>
  <action name="status"/>
  <action name="list"/>
  <action name="monitor"/>
  <action name="metadata"/>
  <action name="validate-all"/>
</actions>
</resource-agent>
"""

FLAGS = {"-o": "action", "--action": "action", "-n": "plug", "--plug": "plug", "--socket": "socket"}


def parse(argv: list[str], stdin_text: str) -> dict[str, str]:
    opts: dict[str, str] = {"action": "reboot", "socket": DEFAULT_SOCKET}
    if argv:
        it = iter(argv)
        for arg in it:
            key, _, value = arg.partition("=")
            if key in FLAGS:
                opts[FLAGS[key]] = value if value else next(it, "")
    else:
        for line in stdin_text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            key = key.strip().replace("-", "_")
            if key == "option":
                key = "action"
            if key == "port":
                key = "plug"
            if key in ("action", "plug", "socket"):
                opts[key] = value.strip()
    return opts


def main(argv: list[str]) -> int:
    opts = parse(argv, "" if argv else sys.stdin.read())
    action = opts["action"]
    if action == "metadata":
        sys.stdout.write(METADATA)
        return 0
    sock = opts["socket"]
    try:
        if action in ("monitor", "validate-all"):
            power.request(sock, "list", "-", "fence", timeout=10)
            return 0
        if action in ("list", "list-status"):
            states = power.request(sock, "list", "-", "fence", timeout=10)
            for item in states.split(","):
                host, _, state = item.partition("=")
                print(f"{host},{state}" if action == "list-status" else f"{host},")
            return 0
        plug = opts.get("plug", "")
        if not plug:
            print("fence_kvmhalab: no plug (host) given", file=sys.stderr)
            return 1
        if action == "status":
            return 0 if power.request(sock, "status", plug, "fence", timeout=10) == "on" else 2
        if action in ("on", "off", "reboot"):
            state = power.request(sock, action, plug, "fence", timeout=60)
            print(f"Success: {plug} is {state}")
            return 0
    except power.PowerError as exc:
        print(f"fence_kvmhalab: {exc}", file=sys.stderr)
        return 1
    print(f"fence_kvmhalab: unknown action {action}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
