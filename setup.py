"""How sipreg builds: the pure SIP core (registrar/sip) compiled to C by mypyc when it can be, pure Python when not.

The SIP core (parser, serializer, digest, transaction and proxy state machines, trace rings) is
what every datagram runs through and uses nothing but the standard library, so it
compiles cleanly; compiled, a REGISTER costs about a sixth fewer instructions
(`python bench/instructions.py`). The rest stays Python: it is I/O glue and
configuration, where compiling gains little and costs the freedom to patch and
subclass. Everything else about the package is in pyproject.toml.

SIPREG_COMPILE chooses:
  auto      (default) compile when mypyc and a C compiler are there, else build pure Python, saying so;
  required  compile or fail the build (the Dockerfile: an image must not silently be the slow form);
  no        pure Python.
Editable installs (`pip install -e .`, the dev venv of `make test`) are always pure Python:
a compiled module beside its .py file would be imported instead of it, and an edit to
the .py would silently not take effect.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
COMPILED_PACKAGE = "registrar/sip"


def compile_mode() -> str:
    mode = os.environ.get("SIPREG_COMPILE", "auto")
    if mode not in ("auto", "required", "no"):
        sys.exit(f"SIPREG_COMPILE={mode!r}: expected auto, required or no")
    if "editable_wheel" in sys.argv or "develop" in sys.argv:
        return "no"
    return mode


def compiled_modules() -> list:
    """mypyc's extensions of the SIP core, or [] for a pure-Python build."""
    mode = compile_mode()
    if mode == "no":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        if mode == "required":
            sys.exit("SIPREG_COMPILE=required, but mypyc (from mypy) is not installed")
        print("sipreg: mypyc is not installed; building pure Python", file=sys.stderr)
        return []
    sources = sorted(str(path.relative_to(ROOT)) for path in (ROOT / COMPILED_PACKAGE).rglob("*.py"))
    # mypyc type-checks what it compiles first; a type error fails the build in every mode,
    # as it is a bug in the source, not a missing tool.
    return mypycify(sources, opt_level="3")


class OptionalBuildExt(build_ext):
    """build_ext that, unless compiling is required, falls back to pure Python when there is no working compiler."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # CCompilerError, DistutilsExecError, DistutilsPlatformError: no usable compiler
            if compile_mode() == "required":
                raise
            print(f"sipreg: compiling the SIP core failed ({error}); building pure Python", file=sys.stderr)
            # Nothing half-built may ship: a module's stub without the shared library it loads would not import.
            for extension in self.extensions:
                Path(self.get_ext_fullpath(extension.name)).unlink(missing_ok=True)
            self.extensions = []


setup(ext_modules=compiled_modules(), cmdclass={"build_ext": OptionalBuildExt})
