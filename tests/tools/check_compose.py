"""Static checks of compose/: the compose file and the Dockerfile parse, every file they
reference exists, and the command line of each service running the vigil image is printed
(JSON) so that the Rust test can have the real binary validate it.

usage: check_compose.py REPO
"""
import glob
import json
import os
import shlex
import sys

import yaml


def main():
    repo = sys.argv[1]
    compose_dir = os.path.join(repo, "compose")
    spec = yaml.safe_load(open(os.path.join(compose_dir, "docker-compose.yml")))
    problems, commands = [], {}
    services = spec.get("services") or {}
    if not services:
        problems.append("no services")
    contexts = []
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            ctx = os.path.normpath(os.path.join(compose_dir, build.get("context", ".")))
            dockerfile = os.path.join(ctx, build.get("dockerfile", "Dockerfile"))
            if not os.path.isfile(dockerfile):
                problems.append(f"{name}: Dockerfile {dockerfile} missing")
            contexts.append((ctx, dockerfile))
        for vol in svc.get("volumes", []):
            host = vol.split(":")[0]
            if host.startswith((".", "/")) and not os.path.exists(os.path.join(compose_dir, host)):
                problems.append(f"{name}: volume source {host} missing")
        for dep in svc.get("depends_on", []) or []:
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
        if str(svc.get("image", "")).startswith("vigil"):
            cmd = svc.get("command")
            if not isinstance(cmd, list) or not cmd:
                problems.append(f"{name}: runs vigil without a command list")
            else:
                commands[name] = cmd
    for ctx, dockerfile in contexts[:1]:
        stages = 0
        for raw in open(dockerfile):
            line = raw.strip()
            if line.startswith("FROM "):
                stages += 1
            if line.startswith("COPY ") and "--from=" not in line:
                parts = shlex.split(line)[1:]
                for src in parts[:-1]:
                    if not glob.glob(os.path.join(ctx, src)):
                        problems.append(f"Dockerfile COPY source {src} missing")
        if stages < 2:
            problems.append("Dockerfile is not multi-stage")
    print(json.dumps({"problems": problems, "commands": commands}))


if __name__ == "__main__":
    main()
