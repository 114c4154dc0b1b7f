"""The tree shows the pipeline: the package's shape, read with ``ast`` (never by importing it).

Each property has a check (a function here or in ``import_graph``) run twice: on the real tree,
and on a small fake tree in ``tmp_path`` that breaks the property, so every check is seen to fail
when the property does not hold (and to pass when it does).

Properties: no import circle among the modules (every import counted, also inside functions) nor
among the stage subpackages; no function-level import of a ``fbs_debitor`` module; ``core``
imports no other stage; runtime code never imports the sandbox and the image leaves it out; only
``fbs_debitor.airflow`` imports Airflow; only ``core/db.py`` knows PostgreSQL from SQLite; DAG
files import little at parse time and only ``fbs_debitor.airflow`` in their tasks; each DAG's
``doc_md`` names every one of its tasks; and test files never import from other test files.
"""

from __future__ import annotations

import ast
import posixpath
import re
import sys
import textwrap
from pathlib import Path

import pytest
from import_graph import Tree, circles, describe, read_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "plugins" / "fbs_debitor"
DAGS = ROOT / "dags"
TESTS = ROOT / "tests"


def listed(what: str, findings: list[str]) -> str:
    """A failure message with every finding in full."""
    return f"{what}:\n  " + "\n  ".join(findings)


@pytest.fixture(scope="module")
def tree() -> Tree:
    return Tree.read(PACKAGE)


def fake_tree(tmp_path: Path, files: dict[str, str], package: str = "fbs_debitor") -> Path:
    """Write ``files`` (paths relative to the package folder) as a fake package; every folder gets
    an ``__init__.py`` unless ``files`` gives one. Returns the package folder."""
    base = tmp_path / package
    for rel, source in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    for folder in [base, *(p for p in base.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    return base


# --- no import circles ------------------------------------------------------------------------------

def module_circles(tree: Tree) -> list[str]:
    graph = tree.module_graph()
    return [describe(c, graph) for c in circles(graph)]


def stage_circles(tree: Tree) -> list[str]:
    graph = tree.stage_graph()
    return [describe(c, graph) for c in circles(graph)]


def test_no_import_circle_among_the_modules_counting_imports_inside_functions(tree):
    assert len(tree.modules) > 40 and tree.module_graph()["fbs_debitor.transfer.run"]   # the real package was read
    found = module_circles(tree)
    assert found == [], listed("import circles (module -> module, and the imports that make them)", found)


def test_no_import_circle_among_the_stage_subpackages(tree):
    stages = tree.stage_graph()
    assert {"fbs_debitor.core", "fbs_debitor.claims", "fbs_debitor.delivery"} <= set(stages)
    assert "fbs_debitor.core" in stages["fbs_debitor.claims"]                         # edges were found
    found = stage_circles(tree)
    assert found == [], listed("import circles between stages", found)


def test_circle_checker_finds_a_circle_hidden_in_a_function_level_import_and_names_its_modules(tmp_path):
    clean = Tree.read(fake_tree(tmp_path / "clean", {
        "core/ledger.py": "import json\n",
        "claims/model.py": "from fbs_debitor.core import ledger\n",
        "claims/builder.py": "from . import model\n\ndef build():\n    from fbs_debitor.core.ledger import x\n",
    }))
    assert module_circles(clean) == [] and stage_circles(clean) == []

    hidden = Tree.read(fake_tree(tmp_path / "hidden", {
        "core/ledger.py": "def record():\n    from fbs_debitor.claims import builder\n",
        "claims/builder.py": "from .model import Claim\n",
        "claims/model.py": "from ..core.ledger import record\n",
    }))
    (found,) = module_circles(hidden)
    assert found.startswith("fbs_debitor.claims.builder -> fbs_debitor.claims.model -> fbs_debitor.core.ledger "
                            "-> fbs_debitor.claims.builder")
    assert "fbs_debitor/core/ledger.py:2 from fbs_debitor.claims import builder (inside record)" in found
    assert stage_circles(hidden) and "fbs_debitor.claims -> fbs_debitor.core -> fbs_debitor.claims" in stage_circles(hidden)[0]


def test_circle_checker_counts_the_package_init_that_importing_a_submodule_runs(tmp_path):
    """``import fbs_debitor.core.ledger`` runs ``core/__init__.py`` first: a circle through it is one."""
    base = fake_tree(tmp_path, {
        "core/__init__.py": "from fbs_debitor.claims import model\n",
        "core/ledger.py": "",
        "claims/model.py": "import fbs_debitor.core.ledger\n",
    })
    assert [c.split("  ")[0] for c in module_circles(Tree.read(base))] == [
        "fbs_debitor.claims.model -> fbs_debitor.core -> fbs_debitor.claims.model"]


def test_circle_checker_finds_a_circle_between_stages_that_no_two_modules_make(tmp_path):
    base = fake_tree(tmp_path, {
        "core/settings.py": "from fbs_debitor.claims import model\n",
        "core/ledger.py": "",
        "claims/model.py": "",
        "claims/builder.py": "from fbs_debitor.core import ledger\n",
    })
    assert module_circles(Tree.read(base)) == []
    (found,) = stage_circles(Tree.read(base))
    assert found.startswith("fbs_debitor.claims -> fbs_debitor.core -> fbs_debitor.claims")


# --- no function-level import of the package -------------------------------------------------------

def function_level_package_imports(tree: Tree) -> list[str]:
    """Imports of a ``fbs_debitor`` module inside a function (third-party ones there are allowed)."""
    return [i.where() for i in tree.imports if i.in_function and i.top == "fbs_debitor"]


def test_no_function_level_import_of_a_fbs_debitor_module(tree):
    assert any(i.in_function for i in tree.imports)          # heavy libraries are imported inside functions
    found = function_level_package_imports(tree)
    assert found == [], listed("function-level imports of the package (import at module level)", found)


def test_function_level_import_checker_flags_the_package_and_lets_heavy_libraries_be(tmp_path):
    base = fake_tree(tmp_path, {
        "quality/checks.py": """\
            import logging

            def run():
                import pandas
                import great_expectations as gx
                return pandas, gx
            """,
        "delivery/outbox.py": """\
            class Sender:
                def send(self):
                    from ..core import ledger
                    import fbs_debitor.claims.messages
            """,
    })
    assert function_level_package_imports(Tree.read(base)) == [
        "fbs_debitor/delivery/outbox.py:3 from fbs_debitor.core import ledger (inside send)",
        "fbs_debitor/delivery/outbox.py:4 import fbs_debitor.claims.messages (inside send)"]


# --- core stands alone --------------------------------------------------------------------------------

def core_imports_of_other_stages(tree: Tree) -> list[str]:
    return sorted({imp.where() for importer, targets in tree.module_graph().items()
                   if tree.stage_of(importer) == "fbs_debitor.core"
                   for target, imp in targets.items() if tree.stage_of(target) not in ("fbs_debitor.core", "fbs_debitor")})


def test_core_imports_no_other_stage(tree):
    """``core/__init__.py``: infrastructure every stage stands on, importing none of them."""
    found = core_imports_of_other_stages(tree)
    assert found == [], listed("core imports another stage", found)


def test_core_checker_flags_core_importing_a_stage(tmp_path):
    base = fake_tree(tmp_path, {"core/ledger.py": "def f():\n    from fbs_debitor.claims.model import Claim\n",
                                "core/db.py": "from . import settings\n", "core/settings.py": "",
                                "claims/model.py": "from fbs_debitor.core import db\n"})
    assert core_imports_of_other_stages(Tree.read(base)) == [
        "fbs_debitor/core/ledger.py:2 from fbs_debitor.claims.model import Claim (inside f)"]


# --- the sandbox stays out of runtime code and out of the image ------------------------------------

def sandbox_imports_outside_the_sandbox(tree: Tree) -> list[str]:
    def in_sandbox(module: str | None) -> bool:
        return module is not None and (module == "fbs_debitor.sandbox" or module.startswith("fbs_debitor.sandbox."))

    return [i.where() for i in tree.imports
            if not in_sandbox(i.importer) and in_sandbox(tree.internal(i.target(tree.modules)))]


def test_runtime_code_never_imports_the_sandbox(tree):
    assert any(i.importer.startswith("fbs_debitor.sandbox.") for i in tree.imports)   # the sandbox was read
    found = sandbox_imports_outside_the_sandbox(tree)
    assert found == [], listed("runtime code imports the sandbox", found)


def test_sandbox_checker_flags_any_import_of_it_from_runtime_code(tmp_path):
    base = fake_tree(tmp_path, {
        "sandbox/emulator.py": "from fbs_debitor.sandbox import names\nfrom . import generator\n",
        "sandbox/names.py": "", "sandbox/generator.py": "",
        "delivery/outbox.py": "def f():\n    from fbs_debitor import sandbox\n",
        "cli.py": "from fbs_debitor.sandbox.emulator import Emulator\n",
    })
    assert sorted(sandbox_imports_outside_the_sandbox(Tree.read(base))) == [
        "fbs_debitor/cli.py:1 from fbs_debitor.sandbox.emulator import Emulator",
        "fbs_debitor/delivery/outbox.py:2 from fbs_debitor import sandbox (inside f)"]


def _docker_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as Docker reads it: ``**`` any number of folders, ``*`` and ``?``
    within one path element, ``[...]`` a class."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1].replace("[!", "[^", 1), end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def docker_excludes(dockerignore: str, path: str) -> bool:
    """Whether Docker leaves ``path`` (relative to the build context) out of the build context: the
    last pattern matching the path or one of its folders decides; ``!`` patterns take back in."""
    rules = []
    for line in dockerignore.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        rules.append((keep, _docker_regex(posixpath.normpath(line.lstrip("!").strip()).lstrip("/"))))
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for keep, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not keep
    return excluded


def test_the_image_leaves_the_sandbox_out_and_keeps_the_runtime_package_and_dags():
    rules = (ROOT / ".dockerignore").read_text()
    files = [p.relative_to(ROOT).as_posix() for p in sorted(PACKAGE.rglob("*.py")) + sorted(DAGS.glob("*.py"))]
    sandbox = [f for f in files if f.startswith("plugins/fbs_debitor/sandbox/")]
    assert sandbox
    in_image = [f for f in sandbox if not docker_excludes(rules, f)]
    assert in_image == [], listed("sandbox files in the image's build context", in_image)
    left_out = [f for f in files if f not in sandbox and docker_excludes(rules, f)]
    assert left_out == [], listed("runtime files .dockerignore leaves out of the image", left_out)


def test_dockerignore_reader_follows_dockers_patterns_and_exceptions():
    rules = "# comment\n**/__pycache__/\nplugins/fbs_debitor/sandbox/\n"
    assert docker_excludes(rules, "plugins/fbs_debitor/sandbox/emulator.py")
    assert docker_excludes(rules, "plugins/fbs_debitor/core/__pycache__/db.cpython-311.pyc")
    assert not docker_excludes(rules, "plugins/fbs_debitor/core/db.py")
    assert not docker_excludes(rules, "plugins/fbs_debitor/sandboxes.py")
    assert not docker_excludes(rules + "!plugins/fbs_debitor/sandbox/emulator.py\n",
                               "plugins/fbs_debitor/sandbox/emulator.py")
    assert not docker_excludes("plugins/*/sandbox\n", "plugins/fbs_debitor/core/db.py")
    assert docker_excludes("plugins/*/sandbox\n", "plugins/fbs_debitor/sandbox/cli.py")
    assert not docker_excludes("# plugins/fbs_debitor/sandbox/\n", "plugins/fbs_debitor/sandbox/cli.py")


# --- Airflow only in fbs_debitor.airflow ------------------------------------------------------------

# The one exception: shared files are Airflow's ObjectStoragePath (issue 18), made in one place,
# core.storage, which every stage asks for its paths (it needs no running Airflow: file:// and any
# fsspec store work from the CLI too; a store's credentials come from an Airflow connection).
AIRFLOW_ALLOWED = {("fbs_debitor.core.storage", "airflow.sdk")}


def airflow_imports_outside_the_airflow_package(tree: Tree) -> list[str]:
    return [i.where() for i in tree.imports if i.top == "airflow"
            and not (i.importer == "fbs_debitor.airflow" or i.importer.startswith("fbs_debitor.airflow."))
            and (i.importer, i.module) not in AIRFLOW_ALLOWED]


def test_only_fbs_debitor_airflow_imports_airflow(tree):
    assert any(i.top == "airflow" for i in tree.imports)       # fbs_debitor.airflow does
    found = airflow_imports_outside_the_airflow_package(tree)
    assert found == [], listed("Airflow imported outside fbs_debitor.airflow", found)


def test_airflow_checker_flags_airflow_imported_by_another_stage(tmp_path):
    base = fake_tree(tmp_path, {
        "airflow/tasks.py": "from airflow.sdk import get_current_context\nfrom . import connections\n",
        "airflow/connections.py": "from airflow.sdk import BaseHook\n",
        "delivery/serviceplatformen.py": "def config():\n    from airflow.sdk import BaseHook\n",
        "transfer/run.py": "import airflow\n",
    })
    assert sorted(airflow_imports_outside_the_airflow_package(Tree.read(base))) == [
        "fbs_debitor/delivery/serviceplatformen.py:2 from airflow.sdk import BaseHook (inside config)",
        "fbs_debitor/transfer/run.py:1 import airflow"]


# --- only core/db.py knows PostgreSQL from SQLite ---------------------------------------------------

# What knowing the dialect looks like in code:
#  * a name about it: ``dialect``, ``is_sqlite``, ``db_value``, ``get_backend_name``, ... (used,
#    defined, imported, a parameter or a keyword);
#  * a dialect's name as a value of its own (``"sqlite"``, ``"postgresql"``, ``"postgresql+psycopg"``):
#    compared with, matched on, or a key choosing between them;
#  * a string starting with a dialect's name that is compared or tested (``url.startswith("sqlite")``,
#    ``"postgres" in url``);
#  * a database driver or SQLAlchemy dialect imported (``sqlite3``, ``psycopg``, ``sqlalchemy.dialects``).
# A default URL such as ``f"sqlite:///{var}/fbs.sqlite"`` in the settings is data handed to core.db,
# not a branch: a string that merely starts with or contains a dialect's name is flagged only where
# it is compared or tested, and a docstring or comment naming PostgreSQL is prose, not code.
DIALECT_NAMES = re.compile(r"^_?(dialects?|is_sqlite|is_postgres(?:ql)?|db_value|get_backend_name|backend_name|"
                           r"get_driver_name|drivername)$")
DIALECT_VALUE = re.compile(r"^(sqlite|postgres|postgresql|psycopg2?|pg8000|asyncpg)(?:\+\w+)?$", re.IGNORECASE)
DIALECT_PREFIX = re.compile(r"^(sqlite|postgres|psycopg|pg8000|asyncpg)", re.IGNORECASE)
DRIVERS = {"sqlite3", "psycopg", "psycopg2", "pg8000", "asyncpg"}
STRING_TESTS = {"startswith", "endswith", "find", "rfind", "index", "rindex", "count", "partition", "removeprefix"}


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def dialect_branches(path: Path, root: Path | None = None) -> list[str]:
    """Where the module at ``path`` tells PostgreSQL from SQLite (see above), as ``file:line what``
    (the file relative to ``root`` when given)."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        line = getattr(node, "lineno", 0)
        names = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.arg):
            names = [node.arg]
        elif isinstance(node, ast.keyword) and node.arg:
            names = [node.arg]
        elif isinstance(node, ast.Import):
            names = [part for alias in node.names for part in alias.name.split(".")]
            if any(alias.name.split(".")[0] in DRIVERS for alias in node.names):
                found.add((line, "imports a database driver"))
        elif isinstance(node, ast.ImportFrom):
            names = (node.module or "").split(".") + [alias.name for alias in node.names]
            if (node.module or "").split(".")[0] in DRIVERS:
                found.add((line, "imports a database driver"))
        found.update((line, f"uses {n!r}") for n in names if DIALECT_NAMES.match(n))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and DIALECT_VALUE.match(node.value):
            found.add((line, f"a dialect's name as a value: {node.value!r}"))
        if isinstance(node, ast.Compare):
            found.update((line, f"compares with {s!r}") for s in _strings(node) if DIALECT_PREFIX.match(s))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STRING_TESTS:
            found.update((line, f"{node.func.attr}({s!r})") for arg in node.args for s in _strings(arg)
                         if DIALECT_PREFIX.match(s))
    shown = path.relative_to(root).as_posix() if root else path.name
    return [f"{shown}:{line} {what}" for line, what in sorted(found)]


def test_only_core_db_branches_on_the_database_dialect():
    db = PACKAGE / "core" / "db.py"
    assert dialect_branches(db)                                  # the one place that does, seen by the check
    others = [p for p in sorted(PACKAGE.rglob("*.py")) if p != db]
    found = [finding for p in others for finding in dialect_branches(p, PACKAGE.parent)]
    assert found == [], listed("dialect knowledge outside core/db.py", found)


def test_dialect_checker_flags_branches_and_lets_a_default_url_be(tmp_path):
    allowed = tmp_path / "settings.py"
    allowed.write_text(textwrap.dedent('''\
        """The stores default to SQLite files; PostgreSQL via FBS_DEBITOR_FBS_URL (postgresql://...)."""
        import os

        URL = "sqlite:///var/fbs.sqlite"


        def urls(var):
            return os.environ.get("FBS_DEBITOR_FBS_URL") or f"sqlite:///{var / 'fbs.sqlite'}"
        '''))
    assert dialect_branches(allowed) == []

    branching = tmp_path / "ledger.py"
    branching.write_text(textwrap.dedent('''\
        import sqlite3
        from fbs_debitor.core.db import is_sqlite

        def save(conn, url, kind):
            if conn.dialect.name == "sqlite":
                pass
            if url.startswith("postgresql"):
                pass
            if "sqlite:" in url:
                pass
            sql = {"postgresql": "ON CONFLICT", "x": 1}
            match kind:
                case "postgres":
                    pass
            return conn.engine.url.get_backend_name()
        '''))
    assert dialect_branches(branching) == [
        "ledger.py:1 imports a database driver",
        "ledger.py:2 uses 'is_sqlite'",
        "ledger.py:5 a dialect's name as a value: 'sqlite'",
        "ledger.py:5 compares with 'sqlite'",
        "ledger.py:5 uses 'dialect'",
        "ledger.py:7 a dialect's name as a value: 'postgresql'",
        "ledger.py:7 startswith('postgresql')",
        "ledger.py:9 compares with 'sqlite:'",
        "ledger.py:11 a dialect's name as a value: 'postgresql'",
        "ledger.py:13 a dialect's name as a value: 'postgres'",
        "ledger.py:15 uses 'get_backend_name'",
    ]


# --- DAG files: light at parse time, the package's Airflow side in their tasks ----------------------

# Module level (parsed every few seconds by the scheduler): __future__, the standard library,
# pendulum and airflow.sdk, and these, each for its reason.
DAG_IMPORT_EXCEPTIONS = {
    "airflow.providers.standard.operators.trigger_dagrun": "TriggerDagRunOperator, which airflow.sdk does not export",
    "fbs_debitor.payments.rhythm": "the payments schedule, read at parse time (it imports only the standard library)",
}
DAG_PARSE_TIME = {"__future__", "pendulum", "airflow.sdk", *DAG_IMPORT_EXCEPTIONS}


# The DAG files' failure/success callbacks: they run when a task or run ends, never at parse time,
# and import only fbs_debitor.airflow (the alerts), like a task.
DAG_CALLBACKS = {"_run_failed", "_run_succeeded"}


def dag_import_problems(path: Path) -> list[str]:
    """Imports of a DAG file that break the rule: at parse time (module level, or in a function
    that is not a task, such as the ``@dag`` function: it runs when the file is parsed) only
    ``DAG_PARSE_TIME`` and the standard library; inside a ``@task`` function only ``fbs_debitor.airflow``."""
    problems = []
    for imp in read_imports(path, path.parent):
        if imp.in_task or (imp.functions and imp.functions[0] in DAG_CALLBACKS):
            if not (imp.module == "fbs_debitor.airflow" or imp.module.startswith("fbs_debitor.airflow.")):
                problems.append(f"{imp.where()}: a task imports only fbs_debitor.airflow")
        elif imp.module not in DAG_PARSE_TIME and imp.top not in sys.stdlib_module_names:
            problems.append(f"{imp.where()}: not allowed at parse time")
    return problems


def test_dag_files_import_only_light_modules_at_parse_time_and_fbs_debitor_airflow_in_tasks():
    files = sorted(DAGS.glob("*.py"))
    assert files
    for path in files:
        imports = read_imports(path, DAGS)
        assert any(i.in_task for i in imports), f"{path.name}: no task imports anything?"
    found = [p for path in files for p in dag_import_problems(path)]
    assert found == [], listed("DAG file imports", found)


def test_dag_import_checker_flags_heavy_parse_time_imports_and_other_imports_in_tasks(tmp_path):
    dag_file = tmp_path / "debitor_example.py"
    dag_file.write_text(textwrap.dedent('''\
        from __future__ import annotations

        import json
        from datetime import timedelta

        import pandas
        import pendulum
        from airflow.sdk import dag, task
        from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
        from airflow.providers.standard.operators.python import PythonOperator
        from fbs_debitor.core import ledger
        from fbs_debitor.payments.rhythm import pickup_crons


        @dag(dag_id="debitor_example")
        def debitor_example():
            from fbs_debitor.airflow import tasks as parsed_every_time

            @task(task_id="good")
            def good():
                from fbs_debitor.airflow import tasks
                import fbs_debitor.airflow.notifications

            @task.branch(task_id="bad")
            def bad():
                from fbs_debitor.transfer import run
                import zeep

                def inner():
                    from fbs_debitor.core import db

            good() >> bad()
        '''))
    assert dag_import_problems(dag_file) == [
        "debitor_example.py:6 import pandas: not allowed at parse time",
        "debitor_example.py:10 from airflow.providers.standard.operators.python import PythonOperator: "
        "not allowed at parse time",
        "debitor_example.py:11 from fbs_debitor.core import ledger: not allowed at parse time",
        "debitor_example.py:17 from fbs_debitor.airflow import tasks (inside debitor_example): not allowed at parse time",
        "debitor_example.py:26 from fbs_debitor.transfer import run (inside debitor_example.bad): "
        "a task imports only fbs_debitor.airflow",
        "debitor_example.py:27 import zeep (inside debitor_example.bad): a task imports only fbs_debitor.airflow",
        "debitor_example.py:30 from fbs_debitor.core import db (inside debitor_example.bad.inner): "
        "a task imports only fbs_debitor.airflow",
    ]


# --- each DAG's doc_md lists its steps ----------------------------------------------------------------

def tasks_missing_from_doc(task_ids, doc_md: str | None) -> list[str]:
    """Task ids ``doc_md`` does not list. A step is listed by its task id in bold (**plan**) or as
    code (`plan`); the same word in prose ("plan the months") does not list it. A task of a task
    group (``send_eg.build_and_send``) is listed when its full id is, or both the group's and its own."""
    doc = doc_md or ""

    def named(word: str) -> bool:
        return f"**{word}**" in doc or f"`{word}`" in doc

    return [t for t in sorted(task_ids)
            if not named(t) and not ("." in t and named(t.rsplit(".", 1)[0]) and named(t.rsplit(".", 1)[1]))]


@pytest.mark.airflow
@pytest.mark.parametrize("dag_id", [p.stem for p in sorted(DAGS.glob("*.py"))])
def test_each_dags_doc_md_names_every_task_of_the_dag(dagbag, dag_id):
    """doc_md is the one place a DAG's steps are listed: each task id appears in it."""
    assert dagbag.import_errors == {}
    dag = dagbag.dags[dag_id]
    missing = tasks_missing_from_doc([t.task_id for t in dag.tasks], dag.doc_md)
    assert dag.doc_md and missing == [], listed(f"tasks of {dag_id} its doc_md does not list (as **id** or `id`)", missing)


def test_doc_md_checker_names_the_tasks_the_doc_leaves_out():
    doc = "1. **open_run** — records the run.\n2. **ingest** — then send the files.\n3. `build_and_send`"
    assert tasks_missing_from_doc(["open_run", "ingest", "build_and_send"], doc) == []
    assert tasks_missing_from_doc(["open_run", "run", "send", "reconcile"], doc) == ["reconcile", "run", "send"]
    assert tasks_missing_from_doc(["plan"], None) == ["plan"]
    grouped = "4. **send_eg** per municipality: **resend** then `build`."
    assert tasks_missing_from_doc(["send_eg.resend", "send_eg.build", "send_eg.check", "send_kmd.resend"],
                                  grouped) == ["send_eg.check", "send_kmd.resend"]


# --- test files never import from other test files ---------------------------------------------------

def imports_of_test_modules(tests: Path) -> list[str]:
    """Imports of a ``test_*`` module or of ``conftest`` in the suite's files: a test file's helpers
    belong in a helper module, its fixtures in conftest.py (pytest hands them out, nobody imports them)."""
    return [i.where() for path in sorted(tests.glob("*.py")) for i in read_imports(path, tests)
            if i.top.startswith("test_") or i.top == "conftest"]


def test_test_files_never_import_from_other_test_files():
    assert len(list(TESTS.glob("test_*.py"))) > 10
    found = imports_of_test_modules(TESTS)
    assert found == [], listed("imports of test modules (move helpers to a helper module, fixtures to conftest.py)", found)


def test_test_file_import_checker_flags_test_modules_and_conftest_and_lets_helpers_be(tmp_path):
    (tmp_path / "conftest.py").write_text("import pytest\nfrom municipality import municipality\n")
    (tmp_path / "municipality.py").write_text("import fbs_rows as fr\n")
    (tmp_path / "test_a.py").write_text("from municipality import municipality\nfrom transfers import outbox\n")
    assert imports_of_test_modules(tmp_path) == []
    (tmp_path / "test_b.py").write_text("import pytest\n\n\ndef test_x():\n    from test_a import helper\n")
    (tmp_path / "test_c.py").write_text("import test_a\nfrom conftest import make_urls\n")
    assert imports_of_test_modules(tmp_path) == [
        "test_b.py:5 from test_a import helper (inside test_x)",
        "test_c.py:1 import test_a",
        "test_c.py:2 from conftest import make_urls",
    ]
