"""The house rules that the code's own syntax tree can check: short functions, honest imports, no circles.

Read from the AST of every module under ``service/`` and ``training/`` (generated stubs excepted),
without importing any of them:

- no function is longer than :data:`MAX_FUNCTION_LINES` lines;
- the modules' imports form no circle, counting an import inside a function (or under
  ``TYPE_CHECKING``) like one at the top of the module: hiding an import in a function does not
  remove the dependency, it only moves the error to run time;
- inside ``service/``, an import sits in a function only for a heavy optional dependency
  (:data:`LAZY_IMPORTS`), and nothing in ``service/`` imports mlserver or the benchmarks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "training")
#: Generated code is not ours to shape.
GENERATED = ("service/rpc/api/",)
MAX_FUNCTION_LINES = 80
#: Functions allowed past MAX_FUNCTION_LINES, each with its reason. Keep it short.
LONG_FUNCTION_EXCEPTIONS: dict[str, str] = {}
#: Top-level modules that ``service/`` may import only inside a function: the optional extras
#: (``train``: torch and the trainer; ``spark``: pyspark). ``aeguard train|evaluate|benchmark`` reach
#: ``training/`` through ``service.cli.COMMANDS``, by name (``importlib``), not by an import statement.
LAZY_IMPORTS = ("torch", "training", "pyspark")
#: Never imported anywhere in ``service/``: the benchmarks' peer server, and the benchmarks themselves.
NEVER_IN_SERVICE = ("mlserver", "bench")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every hand-written module of the packages."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(GENERATED):
                continue
            parts = rel[: -len(".py")].split("/")
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _imports(module: str) -> Iterator[tuple[ast.stmt, str, bool]]:
    """(statement, imported module, inside a function) for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.stmt, str, bool]]:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield child, alias.name, in_function
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(module, child)
                for alias in child.names:
                    # `from a.b import c` imports the module a.b.c when there is one, else a name of a.b.
                    sub = f"{base}.{alias.name}"
                    yield child, sub if sub in MODULES else base, in_function
            else:
                yield from walk(child, inner)

    yield from walk(tree, False)


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _graph() -> dict[str, set[str]]:
    return {m: {target for _, target, _ in _imports(m) if target in MODULES and target != m} for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_graph_sees_the_packages() -> None:
    graph = _graph()
    assert "service.rpc.main" in graph and "service.rpc.process" in graph["service.rpc.main"]
    assert "service.errors" in graph["service.client"] or "service.errors" in graph["service.rpc.status"]


def test_cycles_are_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_service_or_training() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import circles (function-local imports included): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_service_imports_in_functions_only_optional_extras() -> None:
    hidden = [
        f"{MODULES[m].relative_to(REPO)}:{node.lineno} imports {target}"
        for m in MODULES
        if m.startswith("service")
        for node, target, in_function in _imports(m)
        if in_function and target.split(".")[0] not in LAZY_IMPORTS
    ]
    assert not hidden, "function-local imports that are no optional extra (move them up):\n" + "\n".join(
        hidden
    )


def test_service_imports_no_extra_at_module_level_and_never_mlserver_or_bench() -> None:
    wrong = [
        f"{MODULES[m].relative_to(REPO)}:{node.lineno} imports {target}"
        for m in MODULES
        if m.startswith("service")
        for node, target, in_function in _imports(m)
        if target.split(".")[0] in NEVER_IN_SERVICE
        or (not in_function and target.split(".")[0] in LAZY_IMPORTS)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_function_over_80_lines() -> None:
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                name = f"{module}.{node.name}"
                if length > MAX_FUNCTION_LINES and name not in LONG_FUNCTION_EXCEPTIONS:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
