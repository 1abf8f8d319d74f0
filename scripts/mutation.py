#!/usr/bin/env python3
"""Mutation testing of kvmha's safety-critical code, with cosmic-ray.

    scripts/mutation.sh [TARGET...]        run (all targets by default), then report
    scripts/mutation.sh --report [TARGET...]  report on the last run only
    scripts/mutation.sh --retest [TARGET...]  only the last run's survivors again (new tests)
    scripts/mutation.sh --resume [TARGET...]  the last run's pending mutants (interrupted)
    scripts/mutation.sh --list             the targets, their functions and tests

A mutant is the code with one small change (``<`` for ``<=``, ``False`` for ``True``, a
condition negated, ``and`` for ``or``, a number moved by one, an exception type
swapped...). The tests should fail on it ("killed"); one that passes on it ("survived")
marks a decision no test pins down. Only the safety decisions are mutated: the functions
named in TARGETS, in the modules that decide whether a fence answers "off", which keys and
MACs are accepted and what the agent's monitor, probe and stop return. Mutations on other
lines are marked skipped.

How: the tests, and the agents and listeners they start under ``/usr/bin/python3 -I``,
import kvmha *as installed*, so cosmic-ray mutates the installed module (one mutant at a
time, restored after each) and runs the target's fast unit tests against it;
scripts/mutation.sh first puts a throwaway copy of the installed package in its place, in
a private mount namespace, so the real installation is never touched;
``KVMHA_MUTATED_FILES`` tells tests/conftest.py's stale-copy check which file differs on
purpose. A survivor is either killed by a test (tests/unit/
test_*_mutants.py) or listed, with the reason it is equivalent, in
scripts/mutation-equivalent.tsv; any other survivor makes this script exit 1.

Results: build/mutation/<target>.sqlite (cosmic-ray sessions), <target>.py (the source it
mutated), <target>.took (seconds) and report-<targets>.md.
Run as root on a machine set up by scripts/setup.sh.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# scripts/mutation.sh runs this from a snapshot of the worktree and keeps results in the
# worktree's build/mutation
OUT = Path(os.environ.get("KVMHA_MUTATION_OUT") or REPO / "build" / "mutation")
EQUIVALENT = REPO / "scripts" / "mutation-equivalent.tsv"
PYTEST = REPO / ".venv" / "bin" / "pytest"
# per test-command run (a mutant that hangs the tests counts as killed when it runs out)
TIMEOUT_S = 180.0
# Selective mutation (after Offutt et al.'s sufficient operator set): every operator of
# cosmic-ray except that a binary operator is replaced only by its opposite (+ by -, * by
# /, | by &, << by >>) and a comparison only by its negation and its boundary neighbour
# (< by >= and <=, == by !=, is by is not, in by not in); the other replacements (+ by **,
# == by <, ...) add run time, not kills. VariableReplacer/VariableInserter swap or add
# names anywhere: left out, mostly noise.
EXCLUDED_OPERATORS = ("core/VariableReplacer", "core/VariableInserter")
BINARY_KEPT = {
    ("Add", "Sub"), ("Sub", "Add"), ("Mul", "Div"), ("Div", "Mul"), ("FloorDiv", "Mul"),
    ("Mod", "FloorDiv"), ("Pow", "Mul"), ("BitOr", "BitAnd"), ("BitAnd", "BitOr"),
    ("BitXor", "BitOr"), ("LShift", "RShift"), ("RShift", "LShift"),
}  # fmt: skip
COMPARISON_KEPT = {
    ("Eq", "NotEq"), ("NotEq", "Eq"), ("Lt", "GtE"), ("Lt", "LtE"), ("LtE", "Gt"),
    ("LtE", "Lt"), ("Gt", "LtE"), ("Gt", "GtE"), ("GtE", "Lt"), ("GtE", "Gt"),
    ("Is", "IsNot"), ("IsNot", "Is"), ("In", "NotIn"), ("NotIn", "In"),
}  # fmt: skip


def operator_kept(op: str) -> bool:
    if op in EXCLUDED_OPERATORS:
        return False
    kind, _, pair = op.removeprefix("core/").partition("_")
    a, _, b = pair.partition("_")
    if kind == "ReplaceBinaryOperator":
        return (a, b) in BINARY_KEPT
    if kind == "ReplaceComparisonOperator":
        return (a, b) in COMPARISON_KEPT
    return True


@dataclasses.dataclass(frozen=True)
class Target:
    source: str  # path in the repository
    functions: tuple[str, ...]  # qualified names (Class.method)
    tests: tuple[str, ...]


TARGETS: dict[str, Target] = {
    # the fence listener: when it answers ok/off, and what a key may touch
    "listener": Target(
        "fence/listener.py",
        (
            "Listener.handle",
            "Listener._key_for",
            "Listener._remember_mac",
            "Listener._mac_seen",
            "Listener.dispatch",
            "Listener._authorize",
            "Listener._off_certain",
            "Listener.do_status",
            "Listener._early_local_off",
            "Listener._off_everywhere",
            "Listener.do_off",
            "Listener._off",
        ),
        ("tests/unit/test_fence_listener.py", "tests/unit/test_fence_agent.py"),
    ),
    # the wire protocol's MACs and the key files (shared by fence_kvmha and the listener)
    "fence-proto": Target(
        "fence/agent.py",
        (
            "canonical",
            "transcript",
            "client_mac",
            "server_mac",
            "hex_field",
            "check_key_mode",
            "parse_key_text",
            "Key.__init__",
            "Key.load",
            "exchange",
        ),
        ("tests/unit/test_fence_agent.py", "tests/unit/test_fence_listener.py"),
    ),
    # key scopes and the listener's key store
    "keys": Target(
        "fence/keys.py",
        (
            "Scope.parse",
            "Scope.allows",
            "Scope.allows_plug_literally",
            "check_name",
            "write_private",
            "load_scoped_key",
            "load_host_key",
            "KeyStore.reload",
            "KeyStore.get",
        ),
        ("tests/unit/test_fence_listener.py", "tests/unit/test_fence_agent.py"),
    ),
    # the agent's return codes for monitor, probe and stop
    "guest": Target(
        "agents/guest.py",
        (
            "Guest.verdict_at_deadline",
            "Guest.domain_name",
            "Guest.is_off",
            "Guest.wait_off",
            "Guest.process_verdict",
            "Guest.monitor",
            "Guest.stop",
            "Guest.stop_once",
            "Guest.connect_for_stop",
            "Guest.call_ignoring_off",
            "Guest.destroy",
            "Guest.graceful_stop",
        ),
        (
            "tests/unit/test_agent_lifecycle.py",
            "tests/unit/test_agent_libvirt_down.py",
        ),
    ),
}


RC_MARK = "mutation: pytest exit "


def broken_run(output: str) -> bool:
    """A 'kill' that is no kill: the tests did not run (stale install, usage error, no
    tests, pytest internal error). A timeout or a failing or erroring test is a kill."""
    if output == "timeout":
        return False
    if "the installed kvmha differs" in output:
        return True
    for line in output.splitlines():
        if line.startswith(RC_MARK):
            return line[len(RC_MARK) :].strip() in ("3", "4", "5")
    return False  # runs from before the mark was printed


MUTANT_TESTS = {
    "listener": "tests/unit/test_listener_mutants.py",
    "fence-proto": "tests/unit/test_fence_proto_mutants.py",
    "keys": "tests/unit/test_keys_mutants.py",
    "guest": "tests/unit/test_agent_mutants.py",
}


def mutant_tests(name: str) -> tuple[str, ...]:
    """The target's tests plus its mutant-killing tests, where they exist."""
    extra = MUTANT_TESTS[name]
    return TARGETS[name].tests + ((extra,) if (REPO / extra).exists() else ())


def installed_root() -> Path:
    out = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", "import kvmha; print(kvmha.__file__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return Path(out.stdout.strip()).parent


def installed_file(source: str) -> Path:
    top, _, rest = source.partition("/")
    root = installed_root()
    return root / rest if top == "kvmha" else root / top / rest


def function_ranges(path: Path, names: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    tree = ast.parse(path.read_text())
    found: dict[str, tuple[int, int]] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                q = prefix + child.name
                if q in names and not isinstance(child, ast.ClassDef):
                    found[q] = (child.lineno, child.end_lineno or child.lineno)
                walk(child, q + ".")

    walk(tree, "")
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(
            f"mutation: {path.name} has no {', '.join(missing)}: update TARGETS in {__file__}"
        )
    return found


def function_at(ranges: dict[str, tuple[int, int]], line: int) -> str | None:
    best = None
    for name, (a, b) in ranges.items():
        if a <= line <= b and (best is None or a >= ranges[best][0]):
            best = name
    return best


def drop_pyc(path: Path) -> None:
    for pyc in (path.parent / "__pycache__").glob(path.stem + ".*.pyc"):
        pyc.unlink(missing_ok=True)


def restore(name: str) -> None:
    t = TARGETS[name]
    dst = installed_file(t.source)
    src = REPO / t.source
    if dst.read_bytes() != src.read_bytes():
        shutil.copyfile(src, dst)
        print(f"mutation: restored {dst}", file=sys.stderr)
    drop_pyc(dst)


def config_text(name: str) -> str:
    t = TARGETS[name]
    cmd = f"{sys.executable} {Path(__file__).resolve()} --test {name}"
    return (
        "[cosmic-ray]\n"
        f'module-path = "{installed_file(t.source)}"\n'
        f"timeout = {TIMEOUT_S}\n"
        "excluded-modules = []\n"
        f'test-command = "{cmd}"\n\n'
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )


def run_tests(name: str) -> int:
    """The test command cosmic-ray runs for each mutant."""
    t = TARGETS[name]
    copy = os.environ.get("KVMHA_MUTATION_COPY")
    if copy and not os.path.samefile(installed_root(), Path(copy) / "kvmha"):
        print("mutation: the installed kvmha is not the private copy any more", flush=True)
        print(f"{RC_MARK}3", flush=True)
        return 3  # counted as a broken run, never as a kill
    drop_pyc(installed_file(t.source))  # -I agents ignore PYTHONDONTWRITEBYTECODE
    env = {**os.environ, "KVMHA_MUTATED_FILES": t.source}
    env.pop("CI", None)
    argv = [str(PYTEST), "-x", "-q", "-p", "no:cacheprovider", "--timeout=60", *mutant_tests(name)]
    rc = subprocess.run(argv, cwd=REPO, env=env, check=False).returncode
    print(f"{RC_MARK}{rc}", flush=True)  # the report tells real kills from a broken run
    return rc


def filter_session(name: str, db_path: Path) -> tuple[int, int]:
    """Mark skipped every mutation outside the target functions (and excluded operators)."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    t = TARGETS[name]
    ranges = function_ranges(REPO / t.source, t.functions)
    skip, keep = [], 0
    with use_db(str(db_path)) as db:
        for item in db.pending_work_items:
            m = item.mutations[0]
            inside = function_at(ranges, m.start_pos[0]) is not None
            if inside and operator_kept(m.operator_name):
                keep += 1
            else:
                skip.append(item.job_id)
        if skip:
            db.set_multiple_results(
                skip,
                WorkResult(
                    output="outside the safety decisions", worker_outcome=WorkerOutcome.SKIPPED
                ),
            )
    return keep, len(skip)


def cosmic(*args: str) -> None:
    bindir = Path(sys.executable).parent
    subprocess.run([str(bindir / "cosmic-ray"), *args], cwd=REPO, check=True)


def source_digest(name: str) -> str:
    import hashlib

    return hashlib.sha256((REPO / TARGETS[name].source).read_bytes()).hexdigest()


def run_target(
    name: str, count_only: bool = False, retest: bool = False, resume: bool = False
) -> None:
    """One target: a new session, or (retest) only the last run's survivors again, e.g.
    after adding tests that should kill them, or (resume) the last run's pending ones."""
    t = TARGETS[name]
    OUT.mkdir(parents=True, exist_ok=True)
    cfg = OUT / f"{name}.toml"
    db = OUT / f"{name}.sqlite"
    digest = OUT / f"{name}.source"
    restore(name)
    if installed_file(t.source).read_bytes() != (REPO / t.source).read_bytes():
        raise SystemExit(f"mutation: the installed {t.source} is not this checkout's")
    if retest or resume:
        if not db.exists() or digest.read_text().strip() != source_digest(name):
            raise SystemExit(f"mutation: {t.source} changed since its last run: run it anew")
        cfg.write_text(config_text(name))  # this run's paths (a snapshot of its own)
        if run_tests(name) != 0:
            raise SystemExit(f"mutation: {name}: the tests fail without a mutant")
        from cosmic_ray.work_db import use_db
        from cosmic_ray.work_item import TestOutcome

        with use_db(str(db)) as wdb:
            again = [
                j
                for j, r in wdb.results
                if retest
                and (
                    r.test_outcome == TestOutcome.SURVIVED
                    or (r.test_outcome == TestOutcome.KILLED and broken_run(r.output or ""))
                )
            ]
            with wdb._session_maker.begin() as session:  # no public API to reset results
                from cosmic_ray.work_db import WorkResultStorage

                session.query(WorkResultStorage).filter(WorkResultStorage.job_id.in_(again)).delete(
                    synchronize_session=False
                )
        print(f"mutation: {name}: {len(again)} survivors again, and the pending ones")
        try:
            cosmic("exec", str(cfg), str(db))
        finally:
            restore(name)
        return
    cfg.write_text(config_text(name))
    db.unlink(missing_ok=True)
    digest.write_text(source_digest(name) + "\n")
    (OUT / f"{name}.py").write_bytes((REPO / t.source).read_bytes())  # what was mutated
    t0 = time.monotonic()
    cosmic("init", str(cfg), str(db))
    keep, skipped = filter_session(name, db)
    print(f"mutation: {name}: {keep} mutants in {len(t.functions)} functions ({skipped} skipped)")
    if count_only:
        return
    # the baseline: the tests must pass on the real code, or every mutant looks killed
    if run_tests(name) != 0:
        raise SystemExit(f"mutation: {name}: the tests fail without a mutant: fix that first")
    try:
        cosmic("exec", str(cfg), str(db))
    finally:
        restore(name)
    took = time.monotonic() - t0
    (OUT / f"{name}.took").write_text(f"{took:.0f}\n")
    print(f"mutation: {name}: {took:.0f} s")


def load_equivalents() -> dict[tuple[str, str, str, str], str]:
    eq = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            source, func, op, code, why = line.split("\t")
            eq[(source, func, op, code.strip())] = why
    return eq


def mutant_line(diff: str) -> str:
    """The mutated line as it reads in the mutant (the key of an equivalent mutant)."""
    for x in diff.splitlines():
        if x.startswith("+") and not x.startswith("+++"):
            return x[1:].strip()
    return ""


@dataclasses.dataclass
class Survivor:
    target: str
    function: str
    operator: str
    line: int
    code: str
    diff: str
    why: str | None


def survivors(name: str) -> tuple[dict[str, int], list[Survivor]]:
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    t = TARGETS[name]
    mutated = OUT / f"{name}.py"  # the source as it was when the session began
    src = mutated if mutated.exists() else REPO / t.source
    src_lines = src.read_text().splitlines()
    ranges = function_ranges(src, t.functions)
    eq = load_equivalents()
    counts = {
        "mutants": 0,
        "killed": 0,
        "survived": 0,
        "explained": 0,
        "incompetent": 0,
        "broken": 0,
        "pending": 0,
    }
    out: list[Survivor] = []
    with use_db(str(OUT / f"{name}.sqlite")) as db:
        items = {w.job_id: w for w in db.work_items}
        for job_id, result in db.results:
            item = items[job_id]
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            counts["mutants"] += 1
            if result.worker_outcome != WorkerOutcome.NORMAL:
                counts["incompetent"] += 1
                continue
            if result.test_outcome == TestOutcome.KILLED:
                if broken_run(result.output or ""):
                    counts["broken"] += 1
                else:
                    counts["killed"] += 1
                continue
            if result.test_outcome == TestOutcome.INCOMPETENT:
                counts["incompetent"] += 1
                continue
            m = item.mutations[0]
            line = m.start_pos[0]
            code = mutant_line(result.diff or "") or src_lines[line - 1].strip()
            func = function_at(ranges, line) or "?"
            why = eq.get((t.source, func, m.operator_name, code))
            counts["survived"] += 1
            counts["explained"] += why is not None
            out.append(Survivor(name, func, m.operator_name, line, code, result.diff or "", why))
        counts["pending"] = db.num_work_items - db.num_results
    return counts, out


def report(names: list[str]) -> int:
    lines = ["# Mutation testing report", ""]
    lines.append(
        "| target | mutants | killed | survived | explained as equivalent | unexplained | s |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    body: list[str] = []
    unexplained = 0
    for name in names:
        if not (OUT / f"{name}.sqlite").exists():
            lines.append(f"| {name} | not run | | | | | |")
            continue
        counts, surv = survivors(name)
        took = (
            (OUT / f"{name}.took").read_text().strip() if (OUT / f"{name}.took").exists() else "?"
        )
        u = counts["survived"] - counts["explained"]
        unexplained += u + counts["pending"] + counts["broken"]
        if counts["broken"]:
            print(f"mutation: {name}: {counts['broken']} runs did not test", file=sys.stderr)
        pend = f" ({counts['pending']} pending)" if counts["pending"] else ""
        lines.append(
            f"| {name} | {counts['mutants']}{pend} | {counts['killed']} | {counts['survived']} "
            f"| {counts['explained']} | {u} | {took} |"
        )
        for s in surv:
            tag = f"equivalent: {s.why}" if s.why else "UNEXPLAINED"
            body += [f"## {name} {s.function} line {s.line} {s.operator} ({tag})", "",
                     "```diff", s.diff.strip(), "```", ""]  # fmt: skip
            if s.why is None:
                print(
                    f"{name}\t{TARGETS[name].source}\t{s.function}\t{s.operator}\t{s.code}",
                    file=sys.stderr,
                )
    text = "\n".join([*lines, "", *body])
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"report-{'-'.join(names)}.md"
    out.write_text(text + "\n")
    print("\n".join(lines))
    print(f"mutation: report in {out}; {unexplained} unexplained survivors")
    return 1 if unexplained else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", metavar="TARGET", help=", ".join(TARGETS))
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--report", action="store_true", help="report on the last run only")
    ap.add_argument("--count", action="store_true", help="count the mutants, run none")
    ap.add_argument("--retest", action="store_true", help="run the last run's survivors again")
    ap.add_argument("--resume", action="store_true", help="run the last run's pending mutants")
    ap.add_argument("--test", metavar="TARGET", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.test:
        return run_tests(a.test)
    names = a.targets or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target {unknown[0]!r} (targets: {', '.join(TARGETS)})")
    if a.list:
        for n in names:
            t = TARGETS[n]
            print(
                f"{n}: {t.source}: {', '.join(t.functions)}\n  tests: {' '.join(mutant_tests(n))}"
            )
        return 0
    if a.count:
        for n in names:
            run_target(n, True)
        return 0
    if not a.report:
        try:
            for n in names:
                run_target(n, retest=a.retest, resume=a.resume)
        finally:
            for n in names:
                restore(n)
    return report(names)


if __name__ == "__main__":
    sys.exit(main())
