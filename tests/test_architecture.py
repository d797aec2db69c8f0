"""The package's structure, checked statically: the layering of ../shared/STYLE.md ("each module imports only from
those above it"), where torch and dask may be imported, no reads from examples/, size limits, and private helpers.

Every rule reads the files under rnndiag/ (and examples/ for the privacy rule) with :mod:`ast`; no rnndiag module is
imported, except by the one subprocess test that imports all of them to see what comes along. Each failure lists
every offender as ``file:line`` and what it imported, so they can all be fixed in one pass.
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "rnndiag"
EXAMPLES_DIR = ROOT / "examples"

# Modules that may import torch / dask / distributed at module level: repository-relative path -> the extra in
# pyproject.toml's [project.optional-dependencies] that installs what they import, e.g. {"rnndiag/pytorch.py":
# "torch"} (list them in the root conftest.py's NEEDS_EXTRA too). Every other module imports torch inside the
# function that needs it (as rnndiag/weights.py does for .pt files).
INTEGRATIONS: dict[str, str] = {"rnndiag/pytorch/__init__.py": "torch", "rnndiag/pytorch/recorder.py": "torch",
                                "rnndiag/pytorch/watch.py": "torch"}
HEAVY = ("torch", "dask", "distributed")

# `python -m rnndiag` has to reach the CLI, so this entry point is the one file outside the CLI package that may
# import it. Importing it runs the CLI (and exits), so the import-everything subprocess skips it.
CLI_ENTRY_POINT = "rnndiag/__main__.py"

MAX_FUNCTION_LINES = 80
MAX_CLI_MODULE_LINES = 300

FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


class Import(NamedTuple):
    """One imported module: ``import a.b`` gives module "a.b"; ``from .x import f, g`` gives the resolved x, (f, g)."""

    importer: str  # dotted name of the importing module; a script in examples/ is its stem ("exploding")
    module: str  # the module imported or imported from, relative imports resolved
    names: tuple[str, ...]  # the names after `from ... import`; () for a plain `import`
    top_level: bool  # runs when the importer is imported: not inside a function or method body
    lineno: int


# ---------------------------------------------------------------------------------------------------------------
# Reading the source


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def where(path: Path, lineno: int) -> str:
    return f"{rel(path)}:{lineno}"


@functools.cache
def source(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@functools.cache
def parse(path: Path) -> ast.Module:
    return ast.parse(source(path), filename=str(path))


def source_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def example_scripts() -> list[Path]:
    return sorted(EXAMPLES_DIR.glob("*.py"))


def module_name(path: Path) -> str:
    """``rnndiag/analysis/flow.py`` -> ``rnndiag.analysis.flow``, ``rnndiag/cells/__init__.py`` -> ``rnndiag.cells``.

    Anything outside rnndiag/ (a script in examples/, run with its own folder on sys.path) is a top-level module.
    """
    if not path.is_relative_to(PACKAGE_DIR):
        return path.stem
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    """The package a file lives in ("" for a top-level script): the base of its relative imports."""
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def is_under(name: str, prefix: str) -> bool:
    """``name`` is ``prefix`` or inside it: rnndiag.cli.main is under rnndiag.cli; rnndiag.clip is not."""
    return name == prefix or name.startswith(prefix + ".")


def files_of(dotted: str) -> list[Path]:
    """The files of a module or of a package (all of its modules)."""
    return [path for path in source_files() if is_under(module_name(path), dotted)]


def is_package(dotted: str) -> bool:
    return bool(dotted) and (ROOT.joinpath(*dotted.split(".")) / "__init__.py").is_file()


def is_module(dotted: str) -> bool:
    """``dotted`` names a module or package of rnndiag in this checkout (not a function or class)."""
    return is_under(dotted, "rnndiag") and (
        is_package(dotted) or ROOT.joinpath(*dotted.split(".")).with_suffix(".py").is_file()
    )


def resolve(node: ast.ImportFrom, package: str) -> str:
    """The absolute module of ``from <level dots><module> import ...`` written in ``package``."""
    if node.level == 0:
        return node.module or ""
    base = package.split(".") if package else []
    assert node.level - 1 <= len(base), f"relative import beyond the top-level package in {package!r}"
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path) -> Iterator[Import]:
    """Every import statement of a file, in source order, relative imports resolved."""
    importer, package = module_name(path), package_of(path)

    def visit(node: ast.AST, top_level: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(importer, alias.name, (), top_level, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                names = tuple(alias.name for alias in child.names)
                yield Import(importer, resolve(child, package), names, top_level, child.lineno)
            else:  # a class body runs at import time; a function body does not
                yield from visit(child, top_level and not isinstance(child, FUNCTIONS))

    yield from visit(parse(path), True)


def imported_modules(imp: Import) -> list[str]:
    """The modules an import reaches: ``from rnndiag import clip`` reaches rnndiag.clip (a submodule),
    ``from rnndiag import init_model`` and ``from rnndiag.clip import Clipper`` reach rnndiag / rnndiag.clip."""
    submodules = [f"{imp.module}.{name}" for name in imp.names if is_module(f"{imp.module}.{name}")]
    reaches_module_itself = len(submodules) < len(imp.names) or not imp.names
    return submodules + [imp.module] * reaches_module_itself


def describe(path: Path, imp: Import, module: str) -> str:
    """``file:line imports module (names)``; the names only when they were taken from that module."""
    names = f" ({', '.join(imp.names)})" if imp.names and module == imp.module else ""
    return f"{where(path, imp.lineno)} imports {module}{names}"


def report(rule: str, offenders: list[str]) -> str:
    return f"{rule}\n{len(offenders)} offender(s):\n  " + "\n  ".join(offenders)


def forbidden_imports(files: Iterable[Path], forbidden: Iterable[str]) -> list[str]:
    """``file:line imports X`` for every import in ``files`` that reaches a module under one of ``forbidden``."""
    forbidden = tuple(forbidden)
    return [
        describe(path, imp, module)
        for path in files
        for imp in imports_of(path)
        for module in imported_modules(imp)
        if any(is_under(module, prefix) for prefix in forbidden)
    ]


# ---------------------------------------------------------------------------------------------------------------
# 1-3: layering


def test_cells_import_only_cells_stdlib_and_numpy():
    """Rule 1: rnndiag/cells/* imports only from rnndiag.cells, the standard library and numpy."""
    files = files_of("rnndiag.cells")
    assert files, "rnndiag/cells/ not found"
    offenders = [
        describe(path, imp, module)
        for path in files
        for imp in imports_of(path)
        for module in imported_modules(imp)
        if not (
            is_under(module, "rnndiag.cells")
            or module.split(".")[0] in sys.stdlib_module_names
            or module.split(".")[0] == "numpy"
        )
    ]
    assert not offenders, report("rnndiag/cells/* may import only rnndiag.cells, the standard library and numpy.",
                                 offenders)


def test_analysis_imports_no_training_rendering_or_cli():
    """Rule 2: rnndiag/analysis/* imports none of rnndiag.clip, .train, .experiments, .render, .cli."""
    files = files_of("rnndiag.analysis")
    assert files, "rnndiag/analysis/ not found"
    forbidden = ("rnndiag.clip", "rnndiag.train", "rnndiag.experiments", "rnndiag.render", "rnndiag.cli")
    offenders = forbidden_imports(files, forbidden)
    assert not offenders, report(f"rnndiag/analysis/* must not import {', '.join(forbidden)}.", offenders)


def test_nothing_imports_the_cli():
    """Rule 3a: nothing in rnndiag outside the rnndiag.cli module/package imports rnndiag.cli (the
    `python -m rnndiag` entry point, CLI_ENTRY_POINT, excepted)."""
    files = [path for path in source_files()
             if not is_under(module_name(path), "rnndiag.cli") and rel(path) != CLI_ENTRY_POINT]
    offenders = forbidden_imports(files, ["rnndiag.cli"])
    assert not offenders, report("Only the CLI itself (and rnndiag/__main__.py) may import rnndiag.cli.", offenders)


def test_render_imports_no_cli_or_training():
    """Rule 3b: rnndiag/render/* imports neither rnndiag.cli nor what runs training (train, experiments, clip)."""
    files = files_of("rnndiag.render")
    assert files, "rnndiag/render/ not found"
    forbidden = ("rnndiag.cli", "rnndiag.train", "rnndiag.experiments", "rnndiag.clip")
    offenders = forbidden_imports(files, forbidden)
    assert not offenders, report(f"rnndiag/render/* must not import {', '.join(forbidden)}.", offenders)


def test_engine_and_model_import_nothing_above_them():
    """Rule 3c: rnndiag/engine.py and rnndiag/model.py import none of analysis, render, train, clip, experiments,
    cli."""
    files = files_of("rnndiag.engine") + files_of("rnndiag.model")
    assert files, "rnndiag/engine.py and rnndiag/model.py not found"
    forbidden = [f"rnndiag.{name}" for name in ("analysis", "render", "train", "clip", "experiments", "cli")]
    offenders = forbidden_imports(files, forbidden)
    assert not offenders, report(f"The engine and the model must not import {', '.join(forbidden)}.", offenders)


# ---------------------------------------------------------------------------------------------------------------
# 4: torch and dask stay optional

IMPORT_EVERY_MODULE = """
import importlib, pkgutil, sys
import rnndiag
heavy, skip = {heavy!r}, sys.argv[1:]
pulled_in = {{name: "rnndiag" for name in heavy if name in sys.modules}}  # heavy module -> first import bringing it
def walk(path, prefix):  # as pkgutil.walk_packages, but a skipped package is not imported to look inside
    for info in pkgutil.iter_modules(path, prefix):
        if any(info.name == s or info.name.startswith(s + ".") for s in skip):
            continue
        module = importlib.import_module(info.name)
        for name in heavy:
            if name in sys.modules:
                pulled_in.setdefault(name, info.name)
        if info.ispkg:
            walk(module.__path__, info.name + ".")
walk(rnndiag.__path__, "rnndiag.")
print(pulled_in)
"""


def test_heavy_dependencies_imported_at_module_level_only_by_integrations():
    """Rule 4: torch, dask and distributed are imported at module level (a top-level statement, also inside a
    top-level if/try or class body, but not in a function or method body) only by the modules in INTEGRATIONS."""
    offenders = [
        describe(path, imp, imp.module)
        for path in source_files()
        if rel(path) not in INTEGRATIONS
        for imp in imports_of(path)
        if imp.top_level and imp.module.split(".")[0] in HEAVY
    ]
    assert not offenders, report(
        f"{', '.join(HEAVY)} may be imported at module level only by the modules in INTEGRATIONS; import them "
        "inside the function that needs them, or list the module in INTEGRATIONS with its extra.", offenders)


def test_importing_every_module_loads_neither_torch_nor_dask():
    """Rule 4, at run time: importing every rnndiag module (but INTEGRATIONS and the CLI entry point) leaves torch,
    dask and distributed out of sys.modules."""
    skip = [module_name(ROOT / path) for path in [*INTEGRATIONS, CLI_ENTRY_POINT]]
    code = IMPORT_EVERY_MODULE.format(heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code, *skip], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, f"importing every rnndiag module failed:\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"the import-everything script printed nothing (did a module exit on import?):\n{proc.stderr}"
    pulled_in = ast.literal_eval(lines[-1])
    offenders = [f"{name} first in sys.modules after importing {module}" for name, module in pulled_in.items()]
    assert not offenders, report(f"Importing rnndiag's modules must not import {', '.join(HEAVY)}.", offenders)


def test_the_command_line_starts_without_the_heavy_libraries():
    """``import rnndiag`` and the CLI (its help, its one-line errors) load neither SciPy nor matplotlib nor Jinja2:
    the analysis imports SciPy at its first LAPACK call and the renderers load on use. Together they take longer to
    import than the rest of rnndiag."""
    code = ("import sys, rnndiag, rnndiag.cli; "
            "print([m for m in ('scipy', 'matplotlib', 'jinja2', *sys.argv[1:]) if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code, *HEAVY], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert ast.literal_eval(proc.stdout.strip()) == []


# ---------------------------------------------------------------------------------------------------------------
# 5: the package does not read the repository's examples/

# "examples" as a whole path component: "examples/data", "../examples", "examples" alone; not "my_examples/",
# "examples.txt" or "Examples:".
EXAMPLES_PART = re.compile(r"(?<![\w.-])examples[/\\]|[/\\]examples(?![\w.-])|^examples$")


def doc_strings(tree: ast.AST) -> set[ast.AST]:
    """String constants that are a statement of their own: docstrings (of modules, classes, functions, and the
    attribute docstrings after an assignment). They do nothing when run."""
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }


def test_package_reads_nothing_from_examples():
    """Rule 5: no string constant under rnndiag/ (docstrings aside) has "examples" as a path component, so no
    expression builds a path through the repository's examples/ folder (e.g. ``root / "examples" / ...``)."""
    offenders = []
    for path in source_files():
        tree = parse(path)
        docs = doc_strings(tree)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        found = []  # (line, message); ast.walk goes breadth-first
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or node in docs:
                continue
            if not EXAMPLES_PART.search(node.value):
                continue
            expr = node  # show the whole `a / "examples" / b`, `os.path.join(a, "examples")` or f-string
            while isinstance(parents.get(expr), ast.JoinedStr) or (
                isinstance(parents.get(expr), ast.BinOp) and isinstance(parents[expr].op, ast.Div)
            ):
                expr = parents[expr]
            if isinstance(parents.get(expr), ast.Call):
                expr = parents[expr]
            builds_path = isinstance(expr, ast.BinOp | ast.Call)
            shown = " ".join((ast.get_source_segment(source(path), expr) or repr(node.value)).split())
            kind = "builds a path through examples/" if builds_path else "string names examples/"
            found.append((node.lineno, f"{where(path, node.lineno)} {kind}: {shown[:160]}"))
        offenders += [message for _, message in sorted(found)]
    assert not offenders, report("rnndiag/ must not refer to the repository's examples/ folder (ship data as package "
                                 "data and read it through importlib.resources).", offenders)


# ---------------------------------------------------------------------------------------------------------------
# 6: sizes


def functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function and method, nested ones too."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield prefix + node.name, node
            yield from functions(node, f"{prefix}{node.name}.<locals>.")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, f"{prefix}{node.name}.")
        else:
            yield from functions(node, prefix)


def test_functions_are_at_most_80_lines():
    """Rule 6a: no function or method in rnndiag/ is longer than 80 lines (def line to last line, decorators
    not counted)."""
    offenders = [
        f"{where(path, node.lineno)} {name} {length} lines"
        for path in source_files()
        for name, node in functions(parse(path))
        if (length := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    assert not offenders, report(f"Functions longer than {MAX_FUNCTION_LINES} lines:", offenders)


def test_cli_modules_are_at_most_300_lines():
    """Rule 6b: no module of the CLI (rnndiag/cli/) is longer than 300 lines."""
    files = files_of("rnndiag.cli")
    assert files, "no CLI found: expected rnndiag/cli/"
    offenders = [
        f"{where(path, 1)} {module_name(path)} {length} lines"
        for path in files
        if (length := len(source(path).splitlines())) > MAX_CLI_MODULE_LINES
    ]
    assert not offenders, report(f"CLI modules longer than {MAX_CLI_MODULE_LINES} lines:", offenders)


# ---------------------------------------------------------------------------------------------------------------
# 7: private helpers stay in their package


def is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_owner(dotted: str) -> str | None:
    """The package owning the first private part of ``dotted``, or None when no part is private.

    rnndiag.analysis._common -> rnndiag.analysis (a module in that package); rnndiag._validation -> rnndiag;
    rnndiag.render.figures._finish -> rnndiag.render (a name in a module of that package).
    """
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if i > 0 and is_private(part):
            container = ".".join(parts[:i])
            return container if is_package(container) else container.rpartition(".")[0]
    return None


def test_private_helpers_are_not_imported_across_packages():
    """Rule 7: a private rnndiag name or module (a part starting with "_"; dunders are public) is imported only by
    files inside the package that owns it. Applies to rnndiag/ and examples/*.py (outside every package, so examples
    may import no private rnndiag names or modules; their own sibling _shared is not rnndiag)."""
    offenders = []
    for path in [*source_files(), *example_scripts()]:
        package = package_of(path)
        for imp in imports_of(path):
            if not is_under(imp.module, "rnndiag"):
                continue
            if (owner := private_owner(imp.module)) is not None:
                found = [(imp.module, owner, imp.names)]
            else:
                found = [(f"{imp.module}.{name}", owner, ()) for name in imp.names
                         if (owner := private_owner(f"{imp.module}.{name}")) is not None]
            for dotted, owner, names in found:
                if not is_under(package, owner):
                    shown = f"{dotted} ({', '.join(names)})" if names else dotted
                    offenders.append(f"{where(path, imp.lineno)} imports {shown}, private to {owner}")
    assert not offenders, report("Private names and modules may be imported only inside the package that owns them; "
                                 "make the helper public where it belongs.", offenders)
