"""The package's shape: one import package, layers that import downward only, no import circles.

Read from the source with ``ast`` (nothing is imported), so a new upward import, a circle hidden inside
a function or a package folder missing from pyproject.toml fails here, with the line that did it.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"core": "mmassist.core", "plugins": "mmassist.plugins", "fusion": "mmassist.fusion", "ui": "mmassist.ui"}

# Top to bottom. A module may import modules of its own layer and of the layers below it, never above.
# A layer's entries are prefixes: "mmassist.core.runtime" is the runtime package and everything in it.
LAYERS = [
    ("apps", ["mmassist.core.cli", "mmassist.core.__main__"]),
    ("web app", ["mmassist.ui"]),
    ("public facade", ["mmassist.core"]),  # core/__init__.py: for users and the apps, never for the library
    ("recipes", ["mmassist.core.recipes"]),
    ("training", ["mmassist.core.training"]),
    ("data", ["mmassist.core.data"]),
    ("runtime", ["mmassist.core.runtime"]),
    ("fusion and built-in plugins", ["mmassist.fusion", "mmassist.plugins"]),
    ("plugin contract", ["mmassist.core.contract"]),
    ("base", ["mmassist.core.errors", "mmassist.core.schema", "mmassist.core.hf", "mmassist.core.cache",
              "mmassist.core.version"]),
]
# Entries of one layer that must not import each other.
INDEPENDENT = [("mmassist.fusion", "mmassist.plugins")]
# Where an import inside a function is allowed, and why. Anywhere else it hides an edge of the graph.
LAZY_OK = {
    "mmassist.core.cli": "each sub-command imports what it runs: `mmassist --help` and usage errors answer "
                         "without loading torch, transformers or gradio (several seconds)",
    "mmassist.ui": "`import mmassist.ui` must not import gradio: the app is built on demand",
    "mmassist.ui.server": "gradio's app is imported when the server starts, not when the CLI parses options",
    "mmassist.ui.app": "the Fine-tune tab and the starter's examples are built when the page is",
    "mmassist.ui.finetune_job": "the training stack loads on the first fine-tune started in the app",
    "mmassist.ui.testing": "test helpers import the facade and the server only when a test calls them",
    "mmassist.ui.api": "fastapi, uvicorn and the model stack load when the API is served, not when the CLI parses",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    return {module_name(p): p for folder in FOLDERS for p in sorted((REPO / folder).rglob("*.py"))}


MODULES = source_modules()


def layer_of(module: str) -> int:
    """The index in LAYERS of the most specific prefix that holds ``module``."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in tests/test_layout.py"
    return best


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import of ``module`` that runs."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    in_function = {n.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the package up level - 1 times
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            if target.startswith("mmassist"):
                out.append((target, node.lineno, node.lineno in in_function))
    return out


GRAPH = {m: imports(m) for m in MODULES}


def test_every_package_folder_is_in_the_distribution_and_nothing_generic_is_installed():
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert config["package-dir"] == {package: folder for folder, package in FOLDERS.items()}
    folders = {module_name(p.parent / "__init__.py") for f in FOLDERS for p in (REPO / f).rglob("__init__.py")}
    assert set(config["packages"]) == folders
    assert all(p.startswith("mmassist.") for p in config["packages"]), "only `mmassist` at the top of site-packages"


def test_no_code_imports_the_repository_folders_as_top_level_packages():
    offenders = []
    for path in [*REPO.glob("core/**/*.py"), *REPO.glob("plugins/*.py"), *REPO.glob("fusion/*.py"),
                 *REPO.glob("ui/*.py"), *REPO.glob("tests/**/*.py"), *REPO.glob("bench/*.py"),
                 *REPO.glob("examples/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            offenders += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in FOLDERS]
    assert not offenders, "import these as mmassist.<folder>:\n" + "\n".join(offenders)


def test_imports_run_downward_through_the_layers():
    upward = []
    for module, edges in GRAPH.items():
        here = layer_of(module)
        for target, line, _ in edges:
            if target == "mmassist":
                continue
            there = layer_of(target)
            if there < here:
                upward.append(f"{MODULES[module].relative_to(REPO)}:{line}: {module} ({LAYERS[here][0]}) imports "
                              f"{target} ({LAYERS[there][0]})")
            for a, b in INDEPENDENT:
                for x, y in ((a, b), (b, a)):
                    if (module == x or module.startswith(x + ".")) and (target == y or target.startswith(y + ".")):
                        upward.append(f"{MODULES[module].relative_to(REPO)}:{line}: {x} and {y} are independent")
    assert not upward, "\n".join(upward)


def test_there_is_no_import_circle_even_inside_functions():
    index, low, on_stack, stack, circles = {}, {}, set(), [], []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _, _ in GRAPH.get(node, []):
            if target not in GRAPH:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not circles, f"import circles: {circles}"


def test_imports_inside_functions_only_where_they_keep_a_heavy_dependency_lazy():
    hidden = [f"{MODULES[m].relative_to(REPO)}:{line}: {target}"
              for m, edges in GRAPH.items() if m not in LAZY_OK for target, line, lazy in edges if lazy]
    assert not hidden, "move these imports to the top of the module (or give LAZY_OK a reason):\n" + "\n".join(hidden)


@pytest.mark.parametrize("module", sorted(LAZY_OK))
def test_every_lazy_import_exception_names_a_module_that_exists(module):
    assert module in MODULES


# The library names no modality of a plugin it does not ship: a third-party modality must get everywhere
# (data files, prompts, checkpoints) through the host. MIME types ("audio/wav", sniffed from bytes) are not
# modality names.
LIBRARY = ("core/contract", "core/runtime", "core/data", "core/training", "fusion")


def _code_strings(tree: ast.AST) -> list[tuple[int, str]]:
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_the_library_hard_codes_no_modality_it_does_not_ship():
    found = []
    for folder in LIBRARY:
        for path in sorted((REPO / folder).rglob("*.py")):
            for line, text in _code_strings(ast.parse(path.read_text(encoding="utf-8"))):
                words = [w for w in text.replace("/", " / ").split() if w.strip("<>_,.()").startswith("audio")]
                if words and not text.startswith("audio/"):
                    found.append(f"{path.relative_to(REPO)}:{line}: {text!r}")
    assert not found, "\n".join(found)
