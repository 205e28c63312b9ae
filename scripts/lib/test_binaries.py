"""Maps test suites to their built executables, from the JSON messages of
`cargo test --no-run --message-format=json` on standard input.

    cargo test --workspace --no-run --message-format=json \
      | python3 scripts/lib/test_binaries.py "sd-core layers_parity" ...

prints one line per suite, in the order given: PACKAGE TEST PACKAGE_DIR EXECUTABLE
(a test binary runs from its package's folder, as `cargo test` runs it).
Exits non-zero naming any suite that was not built.
"""

import json
import sys
from pathlib import Path

wanted = [tuple(arg.split()) for arg in sys.argv[1:]]
found = {}
for line in sys.stdin:
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        continue
    target = message.get("target") or {}
    if message.get("reason") != "compiler-artifact" or "test" not in target.get("kind", []):
        continue
    if not message.get("executable"):
        continue
    # package_id: "path+file:///.../crates/sd-core#0.1.0" or "...#sd-core@0.1.0"
    package_dir = Path(message["manifest_path"]).parent
    package = package_dir.name
    found[(package, target["name"])] = (str(package_dir), message["executable"])

missing = [" ".join(w) for w in wanted if w not in found]
if missing:
    sys.exit(f"test_binaries.py: not built: {', '.join(missing)}")
for package, test in wanted:
    print(package, test, *found[(package, test)])
