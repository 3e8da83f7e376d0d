"""The README's code example runs as printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from durable_azure.testing.hub_cleanup import delete_hub_resources

pytestmark = pytest.mark.azurite

ROOT = Path(__file__).resolve().parents[2]


def test_readme_example_prints_the_orchestration_result(azurite: Any, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    example = next(b for b in blocks if "asyncio.run(main())" in b)
    script = tmp_path / "readme_example.py"
    script.write_text(example)
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        delete_hub_resources(azurite.connection_string, "Hello")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Completed ['Hello Tokyo!', 'Hello Lima!', 'Hello Cairo!']"
