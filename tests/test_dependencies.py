"""What the package imports is what it declares: its runtime dependencies, or what they bring."""
import ast
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

PACKAGE = Path(__file__).resolve().parents[1] / 'timm_stra'


def _optional_imports(tree: ast.AST) -> set:
    """The import nodes inside a ``try`` whose handlers catch ``ImportError``: optional (the code runs without)."""
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ('ImportError', 'ModuleNotFoundError') or
                isinstance(h.type, ast.Tuple) and any(getattr(e, 'id', '') in ('ImportError', 'ModuleNotFoundError')
                                                      for e in h.type.elts)
                for h in node.handlers):
            optional.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return optional


def _imported_top_level_modules():
    """Every absolute import's top-level module in the package's source, with the files importing it (optional
    imports, in a ``try`` that catches ``ImportError``, left out)."""
    modules = {}
    for path in PACKAGE.rglob('*.py'):
        tree = ast.parse(path.read_text(), str(path))
        optional = _optional_imports(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                modules.setdefault(name.split('.')[0], set()).add(path.relative_to(PACKAGE.parent).as_posix())
    return modules


def _requirement_closure(names):
    """The distributions ``names`` require at runtime (this platform's markers, no extras), transitively."""
    seen, todo = set(), [n.lower().replace('_', '-') for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(name) or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({'extra': ''}):
                todo.append(req.name.lower().replace('_', '-'))
    return seen


def test_every_import_is_a_declared_dependency_or_brought_by_one():
    declared = [Requirement(text).name for text in metadata.requires('timm-stra') if 'extra ==' not in text]
    assert sorted(declared) == ['huggingface_hub', 'safetensors', 'timm', 'torch']
    allowed = _requirement_closure(declared)
    distributions = metadata.packages_distributions()
    outside = {}
    for module, files in _imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module == 'timm_stra':
            continue
        owners = {d.lower().replace('_', '-') for d in distributions.get(module, [module])}
        if not owners & allowed:
            outside[module] = sorted(files)
    assert outside == {}, f'imported, but neither declared in pyproject.toml nor required by what is: {outside}'


def test_triton_is_an_optional_import():
    """torch brings triton only on Linux (and not every build): the package must import without it."""
    modules = _imported_top_level_modules()
    assert 'triton' not in modules, modules.get('triton')
