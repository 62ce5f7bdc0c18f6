"""Mutation check of the pure core: how many small changes (mutants) to each module its fast unit
tests catch. Not a test: it takes minutes, and its figure is read, not asserted.

The modules are the ones whose rules the product rests on: the restart policy, the spawn planner,
Reconcile's judgement, redaction and the chat state machine's table. The tests are the fast ones
that cover them (the graph ones on SQLite). mutmut (3.x) runs in a copy of the tracked tree in a
temporary directory, so this checkout is left untouched.

    .venv/bin/pip install -e '.[mutation]'
    .venv/bin/python benchmarks/mutation.py [--survivors] [--keep DIR]

Prints killed/total per module; with --survivors also each surviving mutant's diff. The figures of
the last run are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MODULES = [
    "services/supervisor/policy.py",
    "services/dispatch/planner.py",
    "services/graph/reconcile.py",
    "services/supervisor/redact.py",
    "wgs/common/chat_states.py",
]
TESTS = [
    "tests/supervisor/test_policy.py",
    "tests/dispatch/test_planner.py",
    "tests/graph/test_reconcile.py",
    "tests/graph/test_store.py::test_reconcile_needs_proof",
    "tests/graph/test_store.py::test_reconcile_keeps_a_chat_parked_by_its_supervisors_shutdown",
    "tests/graph/test_store.py::test_reconcile_judges_leases_only_a_valid_lease_keeps_a_chat_whose_recorded_pid_is_dead",
    "tests/supervisor/test_redact.py",
    "tests/common/test_chat_states.py",
    "tests/common/test_docs_state_machine.py",
    "tests/graph/test_records.py::test_every_pair_of_states_is_checked_against_the_transition_table",
]


def setup_cfg() -> str:
    def block(name: str, items: list[str]) -> str:
        return f"{name} =\n" + "".join(f"    {i}\n" for i in items)

    return ("[mutmut]\n" + block("source_paths", ["services", "wgs"]) + block("only_mutate", MODULES)
            + block("also_copy", ["docs"]) + block("pytest_add_cli_args_test_selection", TESTS)
            + block("pytest_add_cli_args", ["-p", "no:cacheprovider", "-q"]))


def copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for name in files.decode().split("\0"):
        if not name or not (REPO / name).is_file():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    (dest / "setup.cfg").write_text(setup_cfg())


def summarize(work: Path, mutmut: str, survivors: bool) -> int:
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, check=True, capture_output=True,
                         text=True).stdout
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    surviving: list[str] = []
    for line in out.splitlines():
        if ": " not in line:
            continue
        name, status = line.strip().rsplit(": ", 1)
        module = name.split(".x", 1)[0]  # services.supervisor.policy.x_on_end__mutmut_3
        counts[module][1] += 1
        if status == "killed":
            counts[module][0] += 1
        else:
            surviving.append(name)
    total = [sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())]
    print(f"{'module':<32} {'killed/total':>14}")
    for module, (killed, n) in sorted(counts.items()):
        print(f"{module:<32} {killed:>6}/{n:<6} {100 * killed / n:5.1f}%")
    print(f"{'all':<32} {total[0]:>6}/{total[1]:<6} {100 * total[0] / max(1, total[1]):5.1f}%")
    if survivors:
        for name in surviving:
            diff = subprocess.run([mutmut, "show", name], cwd=work, capture_output=True, text=True).stdout
            print(f"\n=== {name}")
            print("\n".join(ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--survivors", action="store_true", help="print the diff of each surviving mutant")
    ap.add_argument("--keep", type=Path, help="run in this directory and keep it (default: a temporary one)")
    ap.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ns = ap.parse_args()
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or shutil.which("mutmut")
    if mutmut is None:
        print("mutation.py: mutmut is not installed: .venv/bin/pip install -e '.[mutation]'", file=sys.stderr)
        return 2
    work = ns.keep or Path(tempfile.mkdtemp(prefix="wgs-mutation-"))
    try:
        copy_tree(work)
        run = subprocess.run([mutmut, "run", "--max-children", str(ns.max_children)], cwd=work,
                             stdout=subprocess.DEVNULL)
        if run.returncode != 0:
            print(f"mutation.py: mutmut run failed ({run.returncode}); run it in {work} to see why", file=sys.stderr)
            return 1
        return summarize(work, mutmut, ns.survivors)
    finally:
        if ns.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
