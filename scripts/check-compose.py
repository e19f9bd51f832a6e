#!/usr/bin/env python3
"""Checks docker-compose.yml without a Docker engine.

1. Parses it (PyYAML) and checks what this project relies on: the cell is
   built from this repository and uses host networking (so no ports or
   networks beside it), its peers name the libp2p port (8001), not the HTTP
   port (8000), its data dir is on a volume, every bind-mounted file exists,
   every named volume is declared.
2. Validates it against the Compose specification's JSON schema when
   `check-jsonschema` (PyPI) is installed (its copy of the schema ships with
   it: --builtin-schema vendor.compose-spec).
3. Runs `docker compose config -q` when the Compose plugin is installed
   (it needs no engine for that).

usage: check-compose.py [docker-compose.yml]
env:   AIOS_REQUIRE_TOOLS=1 makes a missing check-jsonschema a failure.
exit:  0 ok, 1 a problem, 77 PyYAML not installed (skip)
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys

try:
    import yaml
except ImportError:
    print("SKIP: PyYAML is not installed (pip install pyyaml)")
    sys.exit(77)

problems = []


def check(cond, msg):
    if not cond:
        problems.append(msg)
    return cond


def env_dict(service):
    """Compose allows environment as a list of NAME=value or a mapping."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return dict(env)


def interpolated_default(value):
    """`${VAR:-default}` -> default (what the file gives when .env is empty)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value or "")


def main(argv):
    root = pathlib.Path(__file__).resolve().parent.parent
    path = pathlib.Path(argv[0]) if argv else root / "docker-compose.yml"
    base = path.resolve().parent
    doc = yaml.safe_load(path.read_text())
    check(isinstance(doc, dict), "top level is not a mapping")
    services = doc.get("services") or {}
    declared_volumes = set((doc.get("volumes") or {}).keys())

    cell = services.get("aios-cell")
    if check(cell is not None, "no aios-cell service"):
        check(cell.get("build") in (".", {"context": "."}), "aios-cell is not built from this repository (build: .)")
        check(cell.get("image") == "aios-cell:latest", "aios-cell image is not aios-cell:latest")
        check(cell.get("network_mode") == "host", "aios-cell does not use network_mode: host (mDNS needs it)")
        check(cell.get("restart") == "unless-stopped", "aios-cell restart is not unless-stopped")
        env = env_dict(cell)
        for name in ("AIOS_CELL_ID", "AIOS_NETWORK_PEERS", "AIOS_VAULT_ADDR", "AIOS_PROMETHEUS_ADDR"):
            check(name in env, f"aios-cell environment lacks {name} (the seed sets it)")
        for peer in interpolated_default(env.get("AIOS_NETWORK_PEERS")).split(","):
            peer = peer.strip()
            if peer:
                check(not re.search(r":8000$|/tcp/8000(/|$)", peer),
                      f"peer {peer!r} names the HTTP port 8000; libp2p listens on 8001")
        targets = [str(v).split(":")[1] if ":" in str(v) else str(v) for v in cell.get("volumes") or []]
        check("/app/data" in targets, "aios-cell has no volume on /app/data (identity key)")
        labels = cell.get("labels") or []
        check(any("traefik.http.services.aios-cell.loadbalancer.server.port=8000" in str(l) for l in labels),
              "the seed's Traefik labels are gone")

    for name in ("prometheus", "grafana"):
        check(name in services, f"no {name} service")

    for name, svc in services.items():
        if svc.get("network_mode") == "host":
            # Docker drops published ports under host networking and refuses
            # networks: both would be silent or loud mistakes.
            check("ports" not in svc, f"{name}: ports have no effect with network_mode: host")
            check("networks" not in svc, f"{name}: networks cannot be combined with network_mode: host")
        for vol in svc.get("volumes") or []:
            src = str(vol).split(":")[0]
            if src.startswith((".", "/")):
                check((base / src).exists(), f"{name}: bind mount source {src} does not exist")
            else:
                check(src in declared_volumes, f"{name}: named volume {src} is not declared under volumes:")

    mounts = " ".join(str(v) for s in services.values() for v in s.get("volumes") or [])
    for needed in ("./config/prometheus.yml", "./config/grafana/provisioning", "./config/grafana/dashboards"):
        check(needed in mounts, f"{needed} is not mounted")

    # The Compose specification's schema.
    require = os.environ.get("AIOS_REQUIRE_TOOLS") == "1"
    cj = shutil.which("check-jsonschema")
    if cj:
        r = subprocess.run([cj, "--builtin-schema", "vendor.compose-spec", str(path)],
                           capture_output=True, text=True)
        if check(r.returncode == 0, "does not match the Compose specification schema:\n" + r.stdout + r.stderr):
            print("schema: ok (compose-spec, via check-jsonschema)")
    elif require:
        problems.append("check-jsonschema not found (pip install check-jsonschema) and AIOS_REQUIRE_TOOLS=1")
    else:
        print("schema: skipped (pip install check-jsonschema)")

    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        r = subprocess.run([docker, "compose", "-f", str(path), "--profile", "observability", "config", "-q"],
                           capture_output=True, text=True)
        if check(r.returncode == 0, "docker compose config failed:\n" + r.stderr):
            print("docker compose config: ok")
    else:
        print("docker compose config: skipped (no Compose plugin)")

    if problems:
        for p in problems:
            print(f"FAIL  {path}: {p}")
        return 1
    print(f"ok    {path} ({len(services)} services)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
