"""pip-audit on the locked dependencies, offline-tolerant.

Fails (exit 1) only on known vulnerabilities pip-audit could actually check. When the
vulnerability service cannot be reached, packages come back "skipped": that is reported, not
failed, so CI works without network access.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LOCKS = ("requirements/prod.lock", "requirements/dev.lock")


def audit(lock: str) -> tuple[int, int, int]:
    """(vulnerabilities, packages checked, packages skipped) for one lock file."""
    command = [
        str(Path(sys.executable).with_name("pip-audit")),
        *("--disable-pip", "--no-deps", "--progress-spinner", "off"),
        *("--format", "json", "--requirement", lock),
    ]
    try:
        done = subprocess.run(  # noqa: S603 - a fixed command line, no outside input
            command, capture_output=True, text=True, timeout=300, check=False
        )
        report = json.loads(done.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        print(f"pip-audit {lock}: could not run ({type(exc).__name__}); not checked")
        return 0, 0, 0
    vulnerabilities = checked = skipped = 0
    for dependency in report.get("dependencies", []):
        if dependency.get("skip_reason"):
            skipped += 1
            continue
        checked += 1
        for vuln in dependency.get("vulns", []):
            vulnerabilities += 1
            fixes = ", ".join(vuln.get("fix_versions", [])) or "no fix yet"
            name = f"{dependency['name']} {dependency.get('version')}"
            print(f"  {name}: {vuln['id']} (fixed in {fixes})")
    return vulnerabilities, checked, skipped


def main() -> int:
    total = 0
    for lock in LOCKS:
        vulnerabilities, checked, skipped = audit(lock)
        total += vulnerabilities
        note = " (vulnerability service unreachable?)" if skipped and not checked else ""
        print(
            f"pip-audit {lock}: {checked} checked, {skipped} skipped{note}, "
            f"{vulnerabilities} known vulnerabilities"
        )
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
