#!/usr/bin/env python3
"""Write manifests/install.yaml: the chart rendered with default values.

    .venv/bin/python tests/chart/render_install.py          # (re)write it
    .venv/bin/python tests/chart/render_install.py --check  # exit 1 if stale

Run it after any change to charts/portcullis (charts/sync-crds.sh runs it after
copying the CRDs). tests/chart/test_chart_generated.py fails when it is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chartlib  # noqa: E402


def main(argv: list[str]) -> int:
    text = chartlib.render_install_yaml()
    target = chartlib.INSTALL_YAML
    if "--check" in argv:
        if not target.exists() or target.read_text() != text:
            print(f"{target.relative_to(chartlib.REPO)} is stale: run tests/chart/render_install.py",
                  file=sys.stderr)
            return 1
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"wrote {target.relative_to(chartlib.REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
