"""Runs one README section's blocks (a JSON file written by test_readme.py) in one namespace, in order.

Each block is compiled as ``README.md`` with its own line numbers, so a failure points at the README line.
"""

from __future__ import annotations

import json
import sys

from tests.readme.blocks import shifted


def main(path: str) -> None:
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for block in json.loads(open(path).read()):
        if block["setup"]:
            exec(compile(shifted(block["setup"], block["setup_line"]), "README.md", "exec"), namespace)
        exec(compile(shifted(block["code"], block["line"]), "README.md", "exec"), namespace)
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
