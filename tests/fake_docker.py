"""`docker` on the fake Compute Engine VMs (tests/fake_compute.py): `pull` knows the images named in
FAKE_DOCKER_IMAGES (comma-separated) and refuses others as a registry does; `run` starts the container's command
as a process of the VM, with only the environment a container gets (the `-e` variables, PATH, HOME) and each
`-v HOST:CONTAINER` mount mapped by writing the host folder where the command names the container's."""

from __future__ import annotations

import os
import sys

BASE_ENV = ("PATH", "HOME", "LANG", "TMPDIR", "CI")


def main(argv: list[str]) -> int:
    known = {image for image in os.environ.get("FAKE_DOCKER_IMAGES", "").split(",") if image}
    if not argv or argv[0] not in ("pull", "run"):
        print(f"fake docker: {' '.join(argv[:1])} is not supported here", file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    if command == "pull":
        image = args[-1]
        if image not in known:
            print(f"Error response from daemon: manifest for {image} not found: manifest unknown", file=sys.stderr)
            return 1
        print(f"Status: Downloaded newer image for {image}")
        return 0
    env = {name: os.environ[name] for name in BASE_ENV if name in os.environ}
    mounts: list[tuple[str, str]] = []
    i = 0
    while i < len(args) and args[i].startswith("-"):
        flag = args[i]
        if flag == "--rm":
            i += 1
        elif flag in ("--network", "--gpus"):
            i += 2
        elif flag == "-e":
            name, has_value, value = args[i + 1].partition("=")
            if has_value or name in os.environ:
                env[name] = value if has_value else os.environ[name]
            i += 2
        elif flag == "-v":
            host, _, inside = args[i + 1].partition(":")
            mounts.append((inside, host))
            i += 2
        else:
            print(f"fake docker: unknown flag {flag}", file=sys.stderr)
            return 125
    image, run = args[i], args[i + 1:]
    if image not in known:
        print(f"docker: Error response from daemon: pull access denied for {image}", file=sys.stderr)
        return 125
    for inside, host in mounts:
        run = [part.replace(inside, host) for part in run]
    os.execvpe(run[0], run, env)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
