"""Reader side of the atomic-publish race (run as a separate process by the test).

Loops: resolve `<store>/current` once, then check that every file its manifest
lists is there with the right hash. Prints a JSON summary when `<stop>` appears.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refresh_testkit import check_bundle


def main() -> None:
    store, stop = Path(sys.argv[1]), Path(sys.argv[2])
    observations, partial, missing_link = 0, [], 0
    versions: set[str] = set()
    published_once = False
    deadline = time.monotonic() + 120
    while not stop.exists() and time.monotonic() < deadline:
        link = store / "current"
        try:
            target = os.readlink(link)
        except OSError:
            if published_once:
                missing_link += 1
            continue
        published_once = True
        problem = check_bundle(store / target)
        observations += 1
        versions.add(target)
        if problem is not None:
            partial.append(f"{target}: {problem}")
    print(
        json.dumps(
            {
                "observations": observations,
                "partial": partial[:20],
                "n_partial": len(partial),
                "versions": len(versions),
                "missing_link": missing_link,
            }
        )
    )


if __name__ == "__main__":
    main()
