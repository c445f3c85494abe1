"""The form of the SIP core a run imports: pure Python from the editable install, or mypyc's build (setup.py)."""

from __future__ import annotations

import importlib
import os
import pkgutil

import registrar.sip


def test_every_module_of_the_sip_core_is_in_the_form_this_run_expects():
    # `make test` runs the suite on the editable install (pure: an edit to a .py file takes
    # effect at once), then again with SIPREG_EXPECT_COMPILED=1 on the compiled build. A stale
    # compiled module beside its .py, or a build that quietly fell back to Python, fails here.
    expect_compiled = os.environ.get("SIPREG_EXPECT_COMPILED") == "1"
    modules = [module.name for module in pkgutil.walk_packages(registrar.sip.__path__, "registrar.sip.")]
    assert len(modules) >= 10
    for name in ["registrar.sip", *modules]:
        module = importlib.import_module(name)
        assert module.__file__.endswith(".py") != expect_compiled, f"{name}: {module.__file__}"
    assert registrar.sip.COMPILED == expect_compiled
