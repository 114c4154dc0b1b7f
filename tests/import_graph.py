"""The package's imports read with ``ast``, never by importing it: every import statement of a
tree of Python files (module level and inside functions alike), the module graph and the stage
graph they make, and the circles in a graph. ``test_layout`` checks the package's shape with these,
and checks them on small fake trees so that each check is seen to fail on a violation.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    """One name an import statement brings in.

    ``file`` is the path relative to the folder on sys.path (``fbs_debitor/core/db.py``).
    ``module`` is the absolute module the statement names (``from .x import y`` in ``a.b.c`` is
    ``a.b.x``); ``name`` is the name imported from it (None for ``import module``). ``functions``
    are the enclosing functions, innermost last (empty at module level, which includes class
    bodies and ``if``/``try`` blocks: those run at import time); ``in_task`` says one of them is
    decorated ``@task`` / ``@task.<kind>`` / ``@task(...)``.
    """

    path: Path
    file: str
    importer: str
    line: int
    module: str
    name: str | None
    functions: tuple[str, ...] = ()
    in_task: bool = False

    @property
    def in_function(self) -> bool:
        return bool(self.functions)

    @property
    def top(self) -> str:
        """The top-level package of what is imported (``airflow`` for ``from airflow.sdk import dag``)."""
        return self.module.split(".")[0]

    def target(self, modules: Iterable[str] = ()) -> str:
        """What is imported as a dotted name: ``module.name`` when that is one of ``modules`` (a
        submodule imported with ``from package import submodule``), else ``module``."""
        if self.name and self.name != "*" and f"{self.module}.{self.name}" in modules:
            return f"{self.module}.{self.name}"
        return self.module

    def where(self) -> str:
        shown = f"from {self.module} import {self.name}" if self.name else f"import {self.module}"
        inside = f" (inside {'.'.join(self.functions)})" if self.functions else ""
        return f"{self.file}:{self.line} {shown}{inside}"


def module_name(path: Path, root: Path) -> str:
    """The dotted module name of ``path`` below ``root`` (the folder on sys.path)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_task_decorator(node: ast.expr) -> bool:
    if isinstance(node, ast.Call):
        node = node.func
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id == "task"


class _Reader(ast.NodeVisitor):
    def __init__(self, path: Path, root: Path):
        self.path, self.file, self.importer = path, path.relative_to(root).as_posix(), module_name(path, root)
        is_package = path.name == "__init__.py"
        self.package = self.importer if is_package else self.importer.rpartition(".")[0]
        self.functions: list[str] = []
        self.tasks: list[bool] = []
        self.found: list[Import] = []

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:       # decorators run where the function is defined
            self.visit(decorator)
        self.functions.append(node.name)
        self.tasks.append(any(_is_task_decorator(d) for d in node.decorator_list))
        for child in node.body:
            self.visit(child)
        self.functions.pop()
        self.tasks.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def _add(self, line: int, module: str, name: str | None) -> None:
        self.found.append(Import(self.path, self.file, self.importer, line, module, name, tuple(self.functions), any(self.tasks)))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node.lineno, alias.name, None)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".") if self.package else []
            if node.level - 1 > len(base):
                raise ValueError(f"{self.path}:{node.lineno}: relative import beyond the top-level package")
            base = base[:len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        for alias in node.names:
            self._add(node.lineno, module, alias.name)


def read_imports(path: Path, root: Path) -> list[Import]:
    """Every import in the file ``path`` (a module below ``root``), where it stands."""
    reader = _Reader(path, root)
    reader.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return reader.found


@dataclass
class Tree:
    """The Python files of one top-level package below ``root`` and all their imports."""

    root: Path
    modules: dict[str, Path]
    imports: list[Import]

    @classmethod
    def read(cls, package_dir: Path) -> Tree:
        root = package_dir.parent
        paths = sorted(package_dir.rglob("*.py"))
        return cls(root, {module_name(p, root): p for p in paths}, [i for p in paths for i in read_imports(p, root)])

    def internal(self, target: str) -> str | None:
        """The module of the tree that importing ``target`` runs, or None when it is not the tree's
        (``pkg.mod.Name`` is ``pkg.mod``)."""
        while target and target not in self.modules:
            target = target.rpartition(".")[0]
        return target or None

    def module_graph(self) -> dict[str, dict[str, Import]]:
        """importer -> imported module -> the import statement (the first seen), for every import of
        one of the tree's modules, at module level or inside a function. Importing ``a.b.c`` also
        runs the packages ``a.b`` and ``a`` first: those are edges too, except the importer's own
        packages, which are always initialised before it."""
        graph: dict[str, dict[str, Import]] = {m: {} for m in self.modules}
        for imp in self.imports:
            target = self.internal(imp.target(self.modules))
            if target is None:
                continue
            own = {imp.importer.rsplit(".", n)[0] for n in range(imp.importer.count(".") + 1)}
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):
                module = ".".join(parts[:depth])
                if module in self.modules and (module == target or module not in own):
                    graph[imp.importer].setdefault(module, imp)
        return graph

    def stage_of(self, module: str) -> str:
        """``pkg.stage`` for a module inside a stage subpackage, else the module itself."""
        parts = module.split(".")
        if len(parts) >= 2 and ".".join(parts[:2]) in self.modules and self.modules[".".join(parts[:2])].name == "__init__.py":
            return ".".join(parts[:2])
        return module

    def stage_graph(self) -> dict[str, dict[str, Import]]:
        """The module graph with each module replaced by its stage; an import within a stage is no edge."""
        graph: dict[str, dict[str, Import]] = {}
        for importer, targets in self.module_graph().items():
            edges = graph.setdefault(self.stage_of(importer), {})
            for target, imp in targets.items():
                stage = self.stage_of(target)
                if stage != self.stage_of(importer):
                    edges.setdefault(stage, imp)
                    graph.setdefault(stage, {})
        return graph


def circles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One circle per strongly connected part of ``graph`` that has one, as ``[a, b, ..., a]``
    (Tarjan's algorithm, then the shortest way round from the part's first node)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    parts: list[list[str]] = []

    def connect(node: str) -> None:     # iterative Tarjan: a deep package must not hit the recursion limit
        work: list[tuple[str, Iterator[str]]] = [(node, iter(sorted(graph.get(node, {}))))]
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        while work:
            current, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, {})))))
                    break
                if succ in on_stack:
                    low[current] = min(low[current], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[current])
                if low[current] == index[current]:
                    part = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        part.append(member)
                        if member == current:
                            break
                    parts.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            connect(node)

    found = []
    for part in parts:
        start = part[0]
        if len(part) == 1 and start not in graph.get(start, {}):
            continue
        members = set(part)
        # breadth-first from start's successors back to start, inside the part
        paths = {succ: [start, succ] for succ in sorted(graph[start]) if succ in members}
        queue = list(paths)
        while start not in paths:
            node = queue.pop(0)
            for succ in sorted(graph.get(node, {})):
                if succ in members and succ not in paths:
                    paths[succ] = paths[node] + [succ]
                    queue.append(succ)
        found.append(paths[start])
    return found


def describe(circle: list[str], graph: dict[str, dict[str, Import]]) -> str:
    """``a -> b -> a`` and, for each step, the import that makes it."""
    steps = "; ".join(graph[a][b].where() for a, b in zip(circle, circle[1:], strict=False))
    return f"{' -> '.join(circle)}  [{steps}]"
