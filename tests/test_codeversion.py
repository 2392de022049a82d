"""Code versions: which package modules a script runs, and a digest of their content."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from mlpbench.codeversion import code_version, imported_modules

PKG = "cvfixture"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A package `cvfixture` on sys.path and a script beside it that imports one of its modules."""

    def write(rel, text):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    write(f"{PKG}/__init__.py", "VERSION = 1\n")
    write(f"{PKG}/entry.py", """\
        from . import helpers
        from .sub.leaf import leaf_function
        from cvfixture.values import CONSTANT  # an attribute of a module, not a submodule
        import json  # outside the package: ignored
        """)
    write(f"{PKG}/helpers.py", """\
        def late():
            from cvfixture import lazy  # imports inside functions count
            return lazy
        """)
    write(f"{PKG}/lazy.py", "\n")
    write(f"{PKG}/values.py", "CONSTANT = 2\n")
    write(f"{PKG}/sub/__init__.py", "from .. import values\n")
    write(f"{PKG}/sub/leaf.py", "def leaf_function():\n    return 1\n")
    write(f"{PKG}/unused.py", "\n")
    script = write("scripts/run.py", f"from {PKG}.entry import helpers\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path, script
    for name in [m for m in sys.modules if m == PKG or m.startswith(PKG + ".")]:
        del sys.modules[name]


def test_imports_are_followed_transitively(project):
    root, script = project
    found = imported_modules(script, package=PKG)
    assert list(found) == [
        "cvfixture", "cvfixture.entry", "cvfixture.helpers", "cvfixture.lazy",
        "cvfixture.sub", "cvfixture.sub.leaf", "cvfixture.values",
    ]
    assert found["cvfixture.sub"] == root / PKG / "sub" / "__init__.py"
    assert found["cvfixture.helpers"] == root / PKG / "helpers.py"


def test_digest_follows_content_not_mtime(project):
    root, script = project
    before = code_version(script, package=PKG)
    later = os.stat(script).st_mtime + 100
    for path in [script, *root.joinpath(PKG).rglob("*.py")]:
        os.utime(path, (later, later))
    assert code_version(script, package=PKG) == before

    # An unused module does not count; a module reached only through a function does.
    (root / PKG / "unused.py").write_text("X = 1\n")
    assert code_version(script, package=PKG) == before
    lazy = root / PKG / "lazy.py"
    lazy.write_text("X = 1\n")
    assert code_version(script, package=PKG) != before
    lazy.write_text("\n")
    assert code_version(script, package=PKG) == before
    script.write_text(script.read_text() + "# comment\n")
    assert code_version(script, package=PKG) != before


def test_extra_entry_files_count(project):
    root, script = project
    notebook = root / "report.py"
    notebook.write_text(f"import {PKG}.unused\n")
    assert "cvfixture.unused" in imported_modules(script, notebook, package=PKG)
    assert code_version(script, notebook, package=PKG) != code_version(script, package=PKG)


def test_import_of_a_missing_module_is_named(project):
    root, script = project
    script.write_text(f"from {PKG}.nowhere import thing\n")
    with pytest.raises(ModuleNotFoundError, match=r"run\.py imports cvfixture\.nowhere"):
        imported_modules(script, package=PKG)


def test_pipeline_scripts_resolve_in_the_real_package():
    from workflow_helpers import REPO

    found = imported_modules(REPO / "scripts" / "train.py")
    assert {"mlpbench", "mlpbench.io", "mlpbench.training", "mlpbench.models"} <= set(found)
    assert "mlpbench.figures" not in found


def test_command_line_lists_modules_and_digest(capsys):
    from mlpbench.codeversion import main
    from workflow_helpers import REPO

    main([str(REPO / "scripts" / "machine.py")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("mlpbench\t") and lines[-1].startswith("code version\t")
    assert any(line.startswith("mlpbench.io\t") for line in lines)
