"""The import rules of the tree, read from the source (AST), and the agent's lean path.

- dependencies point one way: tools -> agents / fence / netcfg -> the core (kvmha/);
  the core imports none of the parts, lazy imports included;
- no module outside the lab (tools/lab) imports it: it ships apart (kvmha-lab);
- no import circles (imports under ``if TYPE_CHECKING:`` do not run, and do not count);
- every module opens with a docstring that says what it owns;
- the agent's monitor path loads only the listed modules (measured in a subprocess of
  the installed kvmha, the way pacemaker-execd runs the agent).
"""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
# source folder -> import package, as pyproject.toml maps them
PACKAGES = {
    "kvmha": "kvmha",
    "agents": "kvmha.agents",
    "fence": "kvmha.fence",
    "netcfg": "kvmha.netcfg",
    "tools": "kvmha.tools",
    "tools/lab": "kvmha.tools.lab",
}
PARTS = ("kvmha.agents", "kvmha.fence", "kvmha.netcfg")
LAB = "kvmha.tools.lab"


def _modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in PACKAGES.items():
        for f in sorted((TOP / folder).glob("*.py")):
            out[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return out


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (never executed)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            t = node.test
            name = (
                t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else ""
            )
            if name == "TYPE_CHECKING":
                for sub in node.body:
                    skip.update(id(n) for n in ast.walk(sub))
    return skip


def imports_of(module: str, path: Path) -> set[str]:
    """Every kvmha module that module imports, at module level or inside a function."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    package = module if path.stem == "__init__" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            # "from kvmha import pcmk" imports the module kvmha.pcmk
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    return {m for m in found if m == "kvmha" or m.startswith("kvmha.")}


GRAPH = {m: imports_of(m, p) for m, p in MODULES.items()}


def _is_core(m: str) -> bool:
    return m.count(".") <= 1 and not m.startswith(
        ("kvmha.agents", "kvmha.fence", "kvmha.netcfg", "kvmha.tools")
    )


def _under(m: str, pkg: str) -> bool:
    return m == pkg or m.startswith(pkg + ".")


def test_the_import_graph_was_read() -> None:
    # guards the reader itself: a test that finds no imports would pass on any tree
    assert "kvmha.pcmk" in GRAPH["kvmha.status"]
    assert "kvmha.agents.ocf" in GRAPH["kvmha.agents.guest"]  # a relative import
    assert "kvmha.tools.lab.lab" in GRAPH["kvmha.tools.lab.watch"]
    assert len(MODULES) > 60


def test_the_core_imports_no_part() -> None:
    bad = {
        m: sorted(i for i in deps if not _is_core(i)) for m, deps in GRAPH.items() if _is_core(m)
    }
    assert {m: d for m, d in bad.items() if d} == {}


def test_agents_fence_and_netcfg_import_no_tools_and_not_each_other() -> None:
    bad = {}
    for m, deps in GRAPH.items():
        part = next((p for p in PARTS if _under(m, p)), None)
        if part is None:
            continue
        wrong = sorted(
            i
            for i in deps
            if _under(i, "kvmha.tools") or any(_under(i, p) for p in PARTS if p != part)
        )
        if wrong:
            bad[m] = wrong
    assert bad == {}


def test_no_module_outside_the_lab_imports_it() -> None:
    bad = {
        m: sorted(i for i in deps if _under(i, LAB))
        for m, deps in GRAPH.items()
        if not _under(m, LAB)
    }
    assert {m: d for m, d in bad.items() if d} == {}


def _imports_libvirt(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import) and any(a.name == "libvirt" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "libvirt":
            return True
    return False


def test_only_the_libvirt_core_module_imports_libvirt() -> None:
    """One home for libvirt (kvmha.virt: connections bounded by a deadline, states, error
    text): no production module imports libvirt itself. The lab's helpers are not
    production code (they drive guests in tests)."""
    bad = sorted(
        m
        for m, p in MODULES.items()
        if m != "kvmha.virt" and not _under(m, LAB) and _imports_libvirt(p)
    )
    assert bad == []


def test_no_import_circles() -> None:
    cycles = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for dep in sorted(GRAPH.get(m, ())):
            if dep not in GRAPH or dep == m:
                continue
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    # a package's __init__ importing its own modules is not a circle of subjects
    cycles = [
        c for c in cycles if not all(x.startswith(c.split(" -> ")[0]) for x in c.split(" -> "))
    ]
    assert cycles == []


def test_every_module_says_what_it_owns() -> None:
    missing = []
    for m, p in MODULES.items():
        if p.stem == "__init__" and not p.read_text().strip():
            continue
        doc = ast.get_docstring(ast.parse(p.read_text()))
        if not doc or len(doc.split()) < 5:
            missing.append(m)
    assert missing == []


# The agent's monitor path: what pacemaker-execd's "Guest monitor" loads. Anything else
# (click, the CLI, the lab, XML parsers, netcfg) would make every monitor slower.
MONITOR_ALLOWED = {
    "kvmha",
    "kvmha.agents",
    "kvmha.errors",
    "kvmha.process",
    "kvmha.virt",
    "kvmha.pcmk",
    "kvmha.endpoint",
}
MONITOR_FORBIDDEN = ("click", "pyroute2", "dbus", "kvmha.tools", "kvmha.netcfg", "kvmha.fence")

PROBE = r"""
import json, sys
env = {"OCF_RESKEY_config": sys.argv[1], "OCF_RESKEY_hypervisor": "test:///default",
    "HA_RSCTMP": sys.argv[2], "HA_LOGFACILITY": "none", "OCF_RESOURCE_INSTANCE": "layout",
    "OCF_RESKEY_peer_uris": "none", "OCF_RESKEY_autoset_utilization_cpu": "false",
    "OCF_RESKEY_autoset_utilization_hv_memory": "false",
    "OCF_RESKEY_CRM_meta_timeout": "20000", "OCF_RESKEY_CRM_meta_interval": "0"}
from kvmha.agents.guest import main
rc = main(["Guest", "monitor"], env)
mods = sorted(m for m in sys.modules if m.split(".")[0] in ("kvmha", "click", "pyroute2", "dbus"))
print(json.dumps({"rc": rc, "modules": mods}))
"""

DOMAIN = (
    "<domain type='test'><name>layout</name><memory>8192</memory>"
    "<os><type>hvm</type></os></domain>"
)


def test_the_monitor_path_loads_only_the_listed_modules(tmp_path: Path) -> None:
    cfg = tmp_path / "layout.xml"
    cfg.write_text(DOMAIN)
    r = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", PROBE, str(cfg), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["rc"] == 7, out  # the domain is not running: OCF_NOT_RUNNING
    loaded = set(out["modules"])
    assert "kvmha.agents.guest" in loaded
    extra = {m for m in loaded if not (m in MONITOR_ALLOWED or m.startswith("kvmha.agents."))}
    assert extra == set()
    assert not [m for m in loaded if m.startswith(MONITOR_FORBIDDEN)]


@pytest.mark.parametrize("module", ["kvmha.tools.cli", "kvmha.fence.listener", "kvmha.status"])
def test_production_runs_without_the_lab(module: str) -> None:
    """With the lab package absent (as without the kvmha-lab RPM), the production modules
    import and ``kvmha`` works, without a ``lab`` command."""
    code = (
        "import sys, importlib.abc\n"
        "class NoLab(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'kvmha.tools.lab' or name.startswith('kvmha.tools.lab.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, NoLab())\n"
        f"import {module}\n"
        "from kvmha.tools.cli import main\n"
        "print(sorted(main.commands))\n"
    )
    r = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    commands = set(eval(r.stdout))
    assert "lab" not in commands and {"status", "guest", "dc", "doctor"} <= commands


def test_the_lab_command_is_registered_where_the_lab_is_installed() -> None:
    from kvmha.tools.cli import main

    assert "lab" in main.commands
