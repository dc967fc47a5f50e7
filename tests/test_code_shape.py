"""The code's shape (issue 23): small modules, few long functions, no import circle; measured with `ast` alone.

Fast and TensorFlow-free: every check parses the sources under `tfflannel/` and imports nothing of them.

- Module size: lines of a `.py` file. Function length: `end_lineno - lineno + 1` of every `def` (methods and
  nested functions included, decorators not).
- Import graph: an edge from a module to every `tfflannel` module it imports, by `import` or `from` statement
  anywhere in it (function-level imports included, so a lazy import cannot hide a circle). `from P import N`
  points at `P.N` when that is a module, else at `P`; a submodule's import of a sibling is not an import of
  its package's `__init__`.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tfflannel"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_LONG_FUNCTIONS = 3


def module_sources():
    """{dotted module name: (path, source)} of every module under `tfflannel/`."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, path.read_text(encoding="utf-8"))
    return modules


def long_functions(modules, limit=MAX_FUNCTION_LINES):
    """[(lines, "path:function")] of every function longer than `limit` lines, longest first."""
    found = []
    for path, source in modules.values():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append((length, f"{path.relative_to(PACKAGE.parent)}:{node.name}"))
    return sorted(found, reverse=True)


def import_graph(modules):
    """{module: set of tfflannel modules it imports} (every import statement, at any depth)."""
    graph = {}
    for name, (path, source) in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def find_cycle(graph):
    """One import circle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_module_is_over_400_lines():
    sizes = {str(path.relative_to(PACKAGE.parent)): len(source.splitlines())
             for path, source in module_sources().values()}
    over = {path: lines for path, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_at_most_three_functions_are_over_60_lines():
    found = long_functions(module_sources())
    print(f"functions over {MAX_FUNCTION_LINES} lines:", *(f"{lines} {where}" for lines, where in found), sep="\n  ")
    assert len(found) <= MAX_LONG_FUNCTIONS, f"{len(found)} functions over {MAX_FUNCTION_LINES} lines: {found}"


def test_no_import_circle_among_tfflannel_modules():
    graph = import_graph(module_sources())
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100      # the graph was built, not empty
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_only_the_export_command_imports_the_export_stage():
    """`tfflannel.export` saves a SavedModel; predict, explain, serve and demo use `tfflannel.serving` (issue 23)."""
    graph = import_graph(module_sources())
    importers = {name for name, targets in graph.items() if not name.startswith("tfflannel.export")
                 and any(t == "tfflannel.export" or t.startswith("tfflannel.export.") for t in targets)}
    assert importers == {"tfflannel.cli.serving"}, importers


def test_the_cycle_finder_finds_a_circle_and_resolves_imports(tmp_path):
    """The checker itself: a planted circle is found, a chain is not, and `from P import N` resolves to P.N."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    modules = {"tfflannel.p": (tmp_path / "__init__.py", "from tfflannel.p import q\n"),
               "tfflannel.p.q": (tmp_path / "q.py", "def f():\n    from . import r\n"),
               "tfflannel.p.r": (tmp_path / "r.py", "import tfflannel.p\n")}
    assert import_graph(modules) == {"tfflannel.p": {"tfflannel.p.q"}, "tfflannel.p.q": {"tfflannel.p.r"},
                                     "tfflannel.p.r": {"tfflannel.p"}}
    assert find_cycle(import_graph(modules)) == ["tfflannel.p", "tfflannel.p.q", "tfflannel.p.r", "tfflannel.p"]
