#!/usr/bin/env bash
# Throughput and latency of the Ray Serve app on a local cluster: REPLICAS
# nodes of one CPU each (one replica per node), the shapes model, measured by
# the same bounded load generator as `sd serve` (benches/server_load.rs).
#
#   bash deploy/ray/bench.sh REPLICAS [CLIENTS] [REQUESTS per client] [STEPS]
#
# Needs `bash scripts/setup.sh --python`, the module installed
# (scripts/test-python.sh does it) and `cargo build --release -p sd-benches
# --bin server_load`. Stops the cluster at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
replicas="${1:?REPLICAS}" clients="${2:-16}" requests="${3:-4}" steps="${4:-20}"
export PATH="$PWD/.venv/bin:$PATH" RAY_USAGE_STATS_ENABLED=0 PYTHONPATH="$PWD/deploy/ray"
port=6391 http=8011
trap 'ray stop --force >/dev/null 2>&1 || true' EXIT
ray start --head --port=$port --node-ip-address=127.0.0.1 --num-cpus=1 \
  --include-dashboard=false --disable-usage-stats >/dev/null
for _ in $(seq 2 "$replicas"); do
  ray start --address=127.0.0.1:$port --node-ip-address=127.0.0.1 --num-cpus=1 \
    --disable-usage-stats >/dev/null
done
python - "$port" "$http" "$replicas" "$PWD/crates/sd-cli/shapes" <<'PY'
import sys, time, urllib.request
import ray
from ray import serve
import app
port, http, replicas, model = sys.argv[1:]
ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
while len([n for n in ray.nodes() if n["Alive"]]) < int(replicas):
    time.sleep(0.5)
serve.start(http_options={"host": "127.0.0.1", "port": int(http), "location": "HeadOnly"})
serve.run(app.app_builder({"model": model, "replicas": replicas}), blocking=False)
for _ in range(360):
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=5).status == 200:
            break
    except OSError:
        time.sleep(0.5)
PY
target/release/server_load "http://127.0.0.1:$http" "$clients" "$requests" "$steps"
