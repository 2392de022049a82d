"""Code versions of pipeline rules: a content digest of a rule's script and the library it imports.

Snakemake decides whether a ``script:`` rule's code changed from the script's modification time
alone, and never looks at the modules the script imports: editing ``mlpbench/figures.py`` leaves
the figures stale, while ``touch scripts/train.py`` reruns every training job. The workflow instead
gives each rule a ``code`` parameter from :func:`code_version` (Snakemake records parameters and
reruns a job whose parameters changed) and turns off Snakemake's mtime-based ``code`` rerun
trigger in its profiles. The modules behind a digest are found, not listed: the import statements
of the entry files are followed through the package's own source, transitively, with :mod:`ast`
(nothing is imported or executed), so a new import can never be missed.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
from pathlib import Path

PACKAGE = "mlpbench"


def package_dir(package: str = PACKAGE) -> Path:
    """Folder of the installed (or ``PYTHONPATH``) copy of ``package``: the one a job imports.

    Raises ``ModuleNotFoundError`` when the package is not importable.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not importable from this interpreter")
    return Path(next(iter(spec.submodule_search_locations)))


def _module_file(name: str, root: Path) -> Path | None:
    """Source file of the dotted module ``name`` of the package at ``root``, if any."""
    parts = name.split(".")[1:]
    candidates = [root.joinpath(*parts, "__init__.py")]
    if parts:
        candidates.insert(0, root.joinpath(*parts[:-1], parts[-1] + ".py"))
    return next((c for c in candidates if c.is_file()), None)


def _imports(
    source: Path, module: str | None, is_package: bool, package: str
) -> tuple[set[str], set[str]]:
    """Modules of ``package`` that ``source`` imports: (certain, possible).

    ``module`` is the dotted name of ``source`` (None for a script outside the package); every
    import statement counts, those inside functions included, relative ones resolved. In
    ``from pkg import name``, ``pkg`` is certain and ``pkg.name`` possible: a submodule if it has
    a source file, an attribute of ``pkg`` otherwise.
    """
    tree = ast.parse(source.read_bytes(), filename=str(source))
    certain: set[str] = set()
    possible: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            certain.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if module is None:
                    raise ImportError(f"{source}: relative import outside the {package} package")
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            certain.add(base)
            possible.update(f"{base}.{a.name}" for a in node.names if a.name != "*")

    def ours(names: set[str]) -> set[str]:
        return {n for n in names if n == package or n.startswith(package + ".")}

    return ours(certain), ours(possible)


def imported_modules(*entry_files: str | os.PathLike, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` the entry files import, directly or through each other.

    Returns dotted name -> source file, sorted by name. Parent packages count (importing
    ``mlpbench.io`` runs ``mlpbench/__init__.py``), and so do imports inside functions.

    Raises ``FileNotFoundError`` for a missing entry file and ``ModuleNotFoundError``, naming
    the importing file and the module, for an imported module of ``package`` without a source
    file (the job would fail on that import).
    """
    root = package_dir(package)
    found: dict[str, Path] = {}
    queue: list[tuple[Path, str | None, bool]] = [(Path(f), None, False) for f in entry_files]
    while queue:
        source, module, is_package = queue.pop()
        certain, possible = _imports(source, module, is_package, package)
        for name in sorted(certain):
            if _module_file(name, root) is None:
                raise ModuleNotFoundError(
                    f"{source} imports {name}, which has no source file under {root}"
                )
        wanted = certain | {n for n in possible if _module_file(n, root) is not None}
        for name in sorted(wanted):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                if prefix not in found:
                    path = _module_file(prefix, root)
                    if path is None:  # a folder without __init__.py
                        raise ModuleNotFoundError(
                            f"{source} imports {name}, but {prefix} has no source file under {root}"
                        )
                    found[prefix] = path
                    queue.append((path, prefix, path.name == "__init__.py"))
    return dict(sorted(found.items()))


def code_version(*entry_files: str | os.PathLike, package: str = PACKAGE) -> str:
    """SHA-256 (hex) of the entry files' bytes and of every ``package`` module they import.

    The digest covers the content of each entry file (in the order given) and, per imported
    module, its dotted name and content (see :func:`imported_modules`); file paths and
    modification times do not enter it, so moving the clone or ``touch`` leaves it unchanged,
    while any edit of a file the rule runs changes it.
    """
    digest = hashlib.sha256()
    for f in entry_files:
        digest.update(b"entry\0" + Path(f).read_bytes() + b"\0")
    for name, path in imported_modules(*entry_files, package=package).items():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    """``python -m mlpbench.codeversion FILE...``: the modules a rule's code version covers."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mlpbench.codeversion",
        description="Print the mlpbench modules the given entry files import, and their digest.",
    )
    parser.add_argument("files", nargs="+", help="a rule's script (and other entry files)")
    args = parser.parse_args(argv)
    for name, path in imported_modules(*args.files).items():
        print(f"{name}\t{path}")
    print(f"code version\t{code_version(*args.files)}")


if __name__ == "__main__":
    main()
