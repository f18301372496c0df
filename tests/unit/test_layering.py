"""The package rules of DESIGN.md that import-linter (tox.ini) does not state: no import
cycle at any depth (function-local imports included), gevent.pywsgi behind
supervisor.http.server alone, and ``import supervisor`` / ``import instances`` importing
nothing the command line's ``patch_all()`` must patch first."""
import os
import re
import subprocess
import sys

import grimp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _graph():
    return grimp.build_graph("instances", "supervisor", cache_dir=None)


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(
                        graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_at_any_depth():
    graph = _graph()
    assert _cycles(graph) == []


def test_the_cycle_finder_sees_a_cycle():
    class Graph:
        modules = {"a", "b", "c"}

        @staticmethod
        def find_modules_directly_imported_by(module):
            return {"a": {"b"}, "b": {"c"}, "c": {"a"}}[module]

    assert _cycles(Graph()) == [["a", "b", "c"]]


def test_only_the_http_server_imports_pywsgi():
    importers = set()
    for package in ("instances", "supervisor"):
        for root, _dirs, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                with open(os.path.join(root, name), encoding="utf-8") as source:
                    if re.search(r"^\s*(from gevent import pywsgi|import gevent\.pywsgi|"
                                 r"from gevent\.pywsgi import)", source.read(), re.M):
                        importers.add(os.path.relpath(os.path.join(root, name), ROOT))
    assert importers <= {os.path.join("supervisor", "http", "server.py")}, importers


@pytest.mark.parametrize("statement", ["import supervisor", "import instances",
                                       "import supervisor.cli", "from supervisor import cli"])
def test_package_imports_load_nothing_that_must_be_patched_first(statement):
    probe = ("import sys; %s; heavy = {'socket', 'ssl', 'threading', 'psycopg2', 'limits', "
             "'watchdog', 'gevent.pywsgi'} & set(sys.modules); print(sorted(heavy))" % statement)
    out = subprocess.run([sys.executable, "-S", "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]", out
