"""The package's modules import each other without cycles.

Read from the source with ``ast`` (nothing is imported), counting every ``import gi_jax...`` and
``from gi_jax... import ...`` wherever it stands, inside functions too: an import hidden in a
function still ties the two modules together, it only delays the failure to a call.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "gi_jax"


def modules(package: pathlib.Path = PACKAGE) -> dict[str, pathlib.Path]:
  """Dotted module name -> file, packages by their ``__init__.py``."""
  found = {}
  for path in package.rglob("*.py"):
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    found[".".join(parts)] = path
  return found


def import_graph(found: dict[str, pathlib.Path]) -> dict[str, dict[str, int]]:
  """module -> {imported module: line of the first such import}, within the package."""

  def resolve(name):
    # ``from gi_jax.render import render`` names a function: the module is its longest prefix.
    while name and name not in found:
      name = name.rpartition(".")[0]
    return name or None

  graph = {}
  for module, path in found.items():
    edges = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          package = module.split(".")
          package = package[:len(package) - node.level + (path.name == "__init__.py")]
          base = ".".join(package + ([node.module] if node.module else []))
        # ``from gi_jax import io`` imports the module gi_jax.io; ``from gi_jax import fit`` the
        # package gi_jax.
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in found else base
                 for alias in node.names]
      else:
        continue
      for name in names:
        target = resolve(name) if name.split(".")[0] == "gi_jax" else None
        if target is not None and target != module:
          edges.setdefault(target, node.lineno)
    graph[module] = edges
  return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
  """One cycle per strongly connected component of more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        components.append(set(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return [shortest_cycle(graph, component) for component in components]


def shortest_cycle(graph, component: set[str]) -> list[str]:
  """A shortest cycle through the component's first module, by breadth-first search."""
  start = min(component)
  paths = {start: [start]}
  frontier = [start]
  while frontier:
    step = []
    for v in frontier:
      for w in sorted(graph[v]):
        if w == start:
          return paths[v] + [start]
        if w in component and w not in paths:
          paths[w] = paths[v] + [w]
          step.append(w)
    frontier = step
  raise AssertionError(f"no cycle through {start}")


def describe(graph, cycle: list[str]) -> str:
  return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + \
      f" -> {cycle[-1]}"


def test_the_graph_sees_every_kind_of_import(tmp_path):
  graph = import_graph(modules())
  assert "gi_jax.fitting" in graph["gi_jax.batch"]          # from gi_jax.fitting import ...
  assert "gi_jax.errors" in graph["gi_jax.render"]          # from gi_jax import errors
  assert "gi_jax.batch" in graph["gi_jax"]                  # the package's own re-exports
  assert "gi_jax.codec.format" in graph["gi_jax.codec.decoder"]
  # A cycle closed by an import inside a function, and one through a relative import.
  package = tmp_path / "gi_jax"
  (package / "sub").mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "a.py").write_text("import gi_jax.b\n")
  (package / "b.py").write_text("def f():\n  from gi_jax import a\n")
  (package / "sub" / "__init__.py").write_text("from .c import x\n")
  (package / "sub" / "c.py").write_text("from gi_jax.sub import y\n")
  toy = import_graph(modules(package))
  assert toy["gi_jax.b"] == {"gi_jax.a": 2} and toy["gi_jax.sub"] == {"gi_jax.sub.c": 1}
  assert sorted(find_cycles(toy)) == [["gi_jax.a", "gi_jax.b", "gi_jax.a"],
                                      ["gi_jax.sub", "gi_jax.sub.c", "gi_jax.sub"]]


def test_cycles_are_reported_by_their_imports():
  cyclic = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
  assert find_cycles(cyclic) == [["a", "b", "c", "a"]]
  assert describe(cyclic, ["a", "b", "c", "a"]) == "a (line 1) -> b (line 2) -> c (line 3) -> a"
  assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles():
  graph = import_graph(modules())
  assert len(graph) > 20
  cycles = find_cycles(graph)
  assert not cycles, "import cycles: " + "; ".join(describe(graph, c) for c in cycles)
