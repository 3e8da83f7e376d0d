#!/usr/bin/env python3
"""Install and run the pinned Azurite emulator with plain ``python3`` (no venv needed).

Usage: ``python3 azurite/azurite.py {install,run,start,stop,status} [--help]``.

This loads ``durable_azure/azurite.py`` (standard library only) by file path, so it works
before the package or the Azure SDK are installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_MODULE_NAME = "_durable_azure_azurite_cli"
_MODULE_PATH = Path(__file__).resolve().parent.parent / "durable_azure" / "azurite.py"


def _load() -> object:
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, _MODULE_PATH)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {_MODULE_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(_load().main())  # type: ignore[attr-defined]
