"""``make image-test``: build Dockerfile.cpu, check the running appliance from outside (issue 15).

Steps, each printed with its name and result:

1. a Docker engine: the one running, else Debian's ``docker.io`` (installed with apt when missing)
   started here with ``dockerd --bridge=none --iptables=false ...``; the CLI is one with BuildKit
   (``/usr/bin/docker`` from docker.io with DOCKER_BUILDKIT=1, or any ``docker`` with buildx);
2. the base ``python:3.11-slim-bookworm``: present, pulled, or, when Docker Hub is unreachable, the
   stand-in from ``scripts/standin-base.sh`` (debootstrap from Debian's mirror);
3. the build, on ``--network host``: the host's pip sources (find-links folders, file:// indexes,
   read from ``pip config``) served on 127.0.0.1 and passed as PIP_* build args, and the host's
   portable llama-cpp-python wheel passed as LLAMA_WHEEL_FROM, so the image does not compile
   llama.cpp when the host already has; nothing host-specific goes into Dockerfile.cpu;
4. the image: size against the budget, non-root user, the one ``/data`` volume;
5. a container with a data volume: HEALTHCHECK healthy, uid 10001, the first-start key printed
   once and accepted, ``/v1/models``, a Responses call, an embeddings call, owner-only files, a
   stored response surviving ``docker restart``;
6. the same volume in a container with ``--network none``: it serves (checked with docker exec),
   so nothing at run time needs a model hub or any other host;
7. a ``/data`` the image's user cannot write: startup stops with one line;
8. ``compose.yaml`` brought up once (docker compose or docker-compose; installed with apt when
   missing) and healthy.

Everything started here (containers, volumes, the compose project, the pip server, a dockerd) is
stopped and removed at the end, pass or fail; the image and BuildKit's cache stay for the next run.

Usage, as root (make image-test does this)::

    .venv/bin/python scripts/image_test.py --llama-wheelhouse ~/.cache/egemma/wheels/llama-...
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "python:3.11-slim-bookworm"
SIZE_BUDGET = 1_100_000_000  # bytes, issue 15: the same models in at most 1.1 GB
DOCKERD_ARGS = [
    "--bridge=none",
    "--iptables=false",
    "--ip6tables=false",
    "--ip-masq=false",
    "--storage-driver=overlay2",
]
HEALTHY_WITHIN = 420.0  # seconds; HEALTHCHECK's interval is 30 s, the models load in seconds


class CheckFailedError(Exception):
    pass


def say(message: str) -> None:
    print(message, flush=True)


def check(name: str, ok: bool, detail: str = "") -> None:
    """One named check: printed either way; a failure stops the run (cleanup still happens)."""
    say(f"  {'ok  ' if ok else 'FAIL'} {name}{f': {detail}' if detail else ''}")
    if not ok:
        raise CheckFailedError(name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run(cmd: list[str], *, check_rc: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, text=True, capture_output=True, check=False, **kw)
    if check_rc and proc.returncode != 0:
        raise CheckFailedError(
            f"{' '.join(cmd[:3])} ... exited {proc.returncode}: {proc.stderr[-2000:]}"
        )
    return proc


def apt_install(package: str) -> None:
    say(f"==> installing {package} with apt")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    if run(install, check_rc=False, env=env).returncode != 0:  # stale lists on a fresh machine
        run(["apt-get", "update"], env=env)
        run(install, env=env)


class Docker:
    """The docker CLI with BuildKit, and what this run started (to stop and remove it)."""

    def __init__(self) -> None:
        self.cli = ""
        self.dockerd: subprocess.Popen[bytes] | None = None
        self.containers: list[str] = []
        self.volumes: list[str] = []
        self.cleanups: list[tuple[str, Any]] = []
        self.env = {**os.environ, "DOCKER_BUILDKIT": "1"}

    def __call__(
        self, *args: str, check_rc: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return run([self.cli, *args], check_rc=check_rc, env=self.env, **kw)

    # -- engine ------------------------------------------------------------------------------------

    def pick_cli(self) -> None:
        """docker.io's CLI builds with BuildKit built in; a newer CLI needs its buildx plugin."""
        if os.environ.get("DOCKER"):
            self.cli = os.environ["DOCKER"]
        elif Path("/usr/bin/docker").exists():
            self.cli = "/usr/bin/docker"
        elif (
            shutil.which("docker")
            and run(["docker", "buildx", "version"], check_rc=False).returncode == 0
        ):
            self.cli = shutil.which("docker") or "docker"
        else:
            apt_install("docker.io")
            self.cli = "/usr/bin/docker"
        version = self("version", "--format", "{{.Client.Version}}", check_rc=False).stdout.strip()
        say(f"  docker CLI {self.cli} ({version or 'version unknown'}), DOCKER_BUILDKIT=1")

    def ensure_engine(self, log: Path) -> None:
        if self("info", check_rc=False).returncode == 0:
            say("  using the Docker engine already running")
            return
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not Path(dockerd).exists():
            apt_install("docker.io")
        say(f"  starting dockerd {' '.join(DOCKERD_ARGS)} (log {log})")
        with log.open("ab") as out:
            self.dockerd = subprocess.Popen(
                [dockerd, *DOCKERD_ARGS], stdout=out, stderr=out, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while self("info", check_rc=False).returncode != 0:
            if self.dockerd.poll() is not None or time.monotonic() > deadline:
                raise CheckFailedError(f"dockerd did not start; see {log}")
            time.sleep(1)

    # -- resources ---------------------------------------------------------------------------------

    def start(self, name: str, *args: str) -> str:
        self.containers.append(name)
        self("run", "-d", "--name", name, *args)
        return name

    def volume(self, name: str) -> str:
        self.volumes.append(name)
        self("volume", "create", name)
        return name

    def cleanup(self) -> None:
        say("==> cleanup: what this run started")
        for label, fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
            say(f"  removed {label}")
        for name in self.containers:
            if self("rm", "-f", "-v", name, check_rc=False).returncode == 0:
                say(f"  removed container {name}")
        for name in self.volumes:
            if self("volume", "rm", "-f", name, check_rc=False).returncode == 0:
                say(f"  removed volume {name}")
        if self.dockerd is not None:
            self.dockerd.terminate()
            try:
                self.dockerd.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.dockerd.kill()
            say(f"  stopped the dockerd this run started (pid {self.dockerd.pid})")


# -- base image --------------------------------------------------------------------------------


def ensure_base(docker: Docker) -> None:
    if docker("image", "inspect", BASE_IMAGE, check_rc=False).returncode == 0:
        say(f"  {BASE_IMAGE} is present")
        return
    pull = docker("pull", BASE_IMAGE, check_rc=False, timeout=600)
    if pull.returncode == 0:
        say(f"  pulled {BASE_IMAGE}")
        return
    say(
        f"  cannot pull {BASE_IMAGE} ({pull.stderr.strip().splitlines()[-1:]}); "
        "building the stand-in"
    )
    env = {**docker.env, "DOCKER": docker.cli}
    subprocess.run([str(ROOT / "scripts" / "standin-base.sh"), BASE_IMAGE], env=env, check=True)


# -- the host's pip sources, served to the build -----------------------------------------------


def host_pip_settings(python: str) -> dict[str, list[str]]:
    """index-url / extra-index-url / find-links as the host's pip sees them (files and env)."""
    out = run([python, "-m", "pip", "config", "list"], check_rc=False).stdout
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        match = re.match(r"^[^.]*\.(index-url|extra-index-url|find-links)='(.*)'$", line.strip())
        if match:
            found[match.group(1)] = match.group(2).split()
    return found


def local_dir(value: str) -> Path | None:
    path = value.removeprefix("file://") if value.startswith("file://") else value
    if "://" in path or not Path(path).is_dir():
        return None
    return Path(path)


class PipSources:
    """Local folders and file:// indexes of the host served over HTTP on 127.0.0.1; remote
    sources passed on as they are. The build uses them through pip's own PIP_* variables."""

    def __init__(self, wheelhouse: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="egemma-pip-"))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        (self.root / "llama").symlink_to(wheelhouse)
        self.server: http.server.ThreadingHTTPServer | None = None

    def _serve(self, folder: Path) -> str:
        name = f"s{len(list(self.root.iterdir()))}"
        (self.root / name).symlink_to(folder)
        return f"{self.base}/{name}"

    def translate(self, key: str, value: str) -> str | None:
        folder = local_dir(value)
        if folder is None:
            return None if value.startswith("file://") else value
        if key == "find-links":
            return self._serve(folder) + "/"
        # An index's pages link to files relative to it (../../files/x.whl): serve its parent.
        return f"{self._serve(folder.parent)}/{folder.name}/"

    def build_args(self, settings: dict[str, list[str]]) -> dict[str, str]:
        args: dict[str, str] = {}
        names = {
            "index-url": "PIP_INDEX_URL",
            "extra-index-url": "PIP_EXTRA_INDEX_URL",
            "find-links": "PIP_FIND_LINKS",
        }
        for key, values in settings.items():
            served = [v for v in (self.translate(key, value) for value in values) if v]
            if served:
                args[names[key]] = " ".join(served)
        args["LLAMA_WHEEL_FROM"] = f"{self.base}/llama/"
        return args

    def start(self) -> None:
        handler = functools.partial(_QuietHandler, directory=str(self.root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
        shutil.rmtree(self.root, ignore_errors=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        return


def pytorch_index_reachable() -> bool:
    try:
        urllib.request.urlopen("https://download.pytorch.org/whl/cpu/", timeout=10)
    except (urllib.error.URLError, OSError):
        return False
    return True


# -- build and the image -----------------------------------------------------------------------


def build(docker: Docker, tag: str, build_args: dict[str, str]) -> float:
    cmd = ["build", "--network", "host", "-f", "Dockerfile.cpu", "-t", tag, "--progress", "plain"]
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    say(f"  build args: {json.dumps(build_args)}")
    start = time.monotonic()
    log = Path(tempfile.gettempdir()) / "egemma-image-build.log"
    with log.open("w") as out:
        proc = subprocess.run(
            [docker.cli, *cmd, "."],
            cwd=ROOT,
            env=docker.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        say(log.read_text()[-4000:])
        raise CheckFailedError(f"docker build failed (log {log})")
    check("docker build -f Dockerfile.cpu", True, f"{seconds:.0f} s (log {log})")
    return seconds


def check_image(docker: Docker, tag: str) -> int:
    info = json.loads(docker("image", "inspect", tag).stdout)[0]
    size = int(info["Size"])
    check(
        "image size within the budget",
        size <= SIZE_BUDGET,
        f"{size / 1e9:.3f} GB (budget {SIZE_BUDGET / 1e9:.1f} GB)",
    )
    config = info["Config"]
    check("image user is non-root", config.get("User") == "10001:10001", str(config.get("User")))
    volumes = sorted((config.get("Volumes") or {}).keys())
    check("only /data is a volume (no anonymous /models)", volumes == ["/data"], str(volumes))
    check("image has a HEALTHCHECK", bool(config.get("Healthcheck", {}).get("Test")))
    return size


# -- the running container ---------------------------------------------------------------------


def wait_healthy(docker: Docker, name: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < HEALTHY_WITHIN:
        state = json.loads(docker("inspect", name).stdout)[0]["State"]
        status = (state.get("Health") or {}).get("Status")
        if status == "healthy":
            return time.monotonic() - start
        if not state.get("Running"):
            logs = docker("logs", name, check_rc=False)
            raise CheckFailedError(f"{name} exited {state.get('ExitCode')}: {logs.stderr[-2000:]}")
        time.sleep(2)
    raise CheckFailedError(f"{name} not healthy within {HEALTHY_WITHIN:.0f} s")


def http_json(url: str, key: str | None = None, body: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def generated_keys(docker: Docker, name: str) -> list[str]:
    logs = docker("logs", name)
    return re.findall(r"^\s+(egk-[A-Za-z0-9_-]+)\s*$", logs.stdout + logs.stderr, re.M)


def server_uid(docker: Docker, name: str) -> str:
    pid = docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip()
    status = Path(f"/proc/{pid}/status").read_text()
    return re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)  # type: ignore[union-attr]


def check_api(base: str, key: str) -> str:
    """/v1/models, a Responses call and an embeddings call through the official client."""
    from openai import OpenAI

    status, _ = http_json(f"{base}/v1/models")
    check("/v1/models without the key is 401", status == 401, str(status))
    client = OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)
    names = sorted(m.id for m in client.models.list().data)
    status, health = http_json(f"{base}/health")
    check(
        "/health: every capability loaded (or disabled)",
        health.get("status") == "ok",
        json.dumps({k: v.get("status") for k, v in health.items() if isinstance(v, dict)}),
    )
    check("/v1/models with the generated key", "smollm2-135m-instruct" in names, ", ".join(names))
    resp = client.responses.create(
        model="smollm2-135m-instruct", input="Say hello in three words.", max_output_tokens=16
    )
    check(
        "a Responses call",
        resp.status in ("completed", "incomplete") and bool(resp.output_text),
        f"{resp.id} {resp.status} {resp.output_text[:40]!r}",
    )
    emb = client.embeddings.create(model="all-MiniLM-L6-v2", input=["an appliance", "a toaster"])
    dims = [len(d.embedding) for d in emb.data]
    check("an embeddings call", dims == [384, 384], f"{emb.model}, dims {dims}")
    return resp.id


def check_files(docker: Docker, name: str) -> None:
    """/data 0700 and what the server stored in it 0600 (the store's WAL files while it runs)."""
    paths = [
        "/data",
        "/data/api_key",
        "/data/egemma.db",
        "/data/egemma.db-wal",
        "/data/egemma.db-shm",
    ]
    out = docker("exec", name, "stat", "-c", "%n %a %u", *paths).stdout
    modes = {path: rest for path, _, rest in (line.partition(" ") for line in out.splitlines())}
    want = {path: ("700 10001" if path == "/data" else "600 10001") for path in paths}
    check("stored data is owner-only", modes == want, json.dumps(modes))


def check_stored_after_restart(
    docker: Docker, name: str, base: str, key: str, resp_id: str
) -> None:
    docker("restart", "-t", "45", name)
    seconds = wait_healthy(docker, name)
    check("healthy again after docker restart", True, f"{seconds:.0f} s")
    status, body = http_json(f"{base}/v1/responses/{resp_id}", key)
    check(
        "the stored response survived docker restart",
        status == 200 and body["id"] == resp_id,
        f"{status}",
    )
    check("the key was printed once, not again on restart", len(generated_keys(docker, name)) == 1)


# Run inside the container (docker exec) when it has no network: loopback only.
OFFLINE_PROBE = r"""
import json, os, sys, urllib.request
base = "http://127.0.0.1:%s" % os.environ.get("PORT", "8000")
key, resp_id = sys.argv[1], sys.argv[2]
def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
    req = urllib.request.Request(base + path, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())
chat = {"model": "smollm2-135m-instruct", "input": "Hi", "max_output_tokens": 8}
emb = {"model": "all-MiniLM-L6-v2", "input": "offline"}
print(json.dumps({
    "health": call("/health")["status"],
    "models": sorted(m["id"] for m in call("/v1/models")["data"]),
    "response": call("/v1/responses", chat)["status"],
    "embedding_dims": len(call("/v1/embeddings", emb)["data"][0]["embedding"]),
    "stored": call("/v1/responses/" + resp_id)["id"] == resp_id,
}))
"""


def check_offline(docker: Docker, tag: str, volume: str, key: str, resp_id: str) -> None:
    name = docker.start(
        f"egemma-it-offline-{os.getpid()}", "--network", "none", "-v", f"{volume}:/data", tag
    )
    seconds = wait_healthy(docker, name)
    check("with --network none: healthy", True, f"{seconds:.0f} s")
    probe = docker("exec", name, "python", "-c", OFFLINE_PROBE, key, resp_id)
    result = json.loads(probe.stdout)
    ok = (
        result["health"] == "ok"
        and result["response"] in ("completed", "incomplete")
        and result["embedding_dims"] == 384
        and result["stored"]
        and "smollm2-135m-instruct" in result["models"]
    )
    check(
        "with --network none: models, Responses, embeddings, stored data (docker exec)",
        ok,
        json.dumps(result),
    )
    docker("rm", "-f", name)


def check_unwritable_data(docker: Docker, tag: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="egemma-rootdata-"))
    os.chmod(folder, 0o755)  # root's, as a bind mount made without chown would be
    docker.cleanups.append((f"folder {folder}", lambda: shutil.rmtree(folder)))
    name = f"egemma-it-unwritable-{os.getpid()}"
    docker.containers.append(name)
    proc = docker(
        "run",
        "--name",
        name,
        "--network",
        "none",
        "-v",
        f"{folder}:/data",
        tag,
        check_rc=False,
        timeout=300,
    )
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    ok = (
        proc.returncode == 1
        and len(lines) == 1
        and lines[0].startswith("egemma: DATA_DIR /data is not writable by uid 10001")
    )
    check(
        "a /data uid 10001 cannot write stops startup with one line",
        ok,
        f"exit {proc.returncode}: {lines[:3]}",
    )


# -- compose -----------------------------------------------------------------------------------


def compose_cli(docker: Docker) -> list[str]:
    if docker("compose", "version", check_rc=False).returncode == 0:
        return [docker.cli, "compose"]
    if not shutil.which("docker-compose"):
        apt_install("docker-compose")
    return [shutil.which("docker-compose") or "docker-compose"]


def check_compose(docker: Docker, tag: str) -> None:
    cli = compose_cli(docker)
    project = f"egemma-it-{os.getpid()}"
    port = free_port()
    env_file = Path(tempfile.mkstemp(prefix="egemma-it-", suffix=".env")[1])  # no settings
    docker.cleanups.append((f"env file {env_file}", env_file.unlink))
    env = {
        **docker.env,
        "EGEMMA_IMAGE": tag,
        "EGEMMA_PORT": str(port),
        "EGEMMA_ENV_FILE": str(env_file),
        "DOCKER_HOST": docker.env.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
    }
    base = [*cli, "-p", project, "-f", str(ROOT / "compose.yaml")]
    config = run([*base, "config"], env=env)
    check(
        f"compose.yaml is valid ({' '.join(Path(c).name for c in cli)} config)",
        True,
        f"{len(config.stdout.splitlines())} lines",
    )

    def down() -> None:
        run([*base, "down", "-v", "--remove-orphans"], env=env, check_rc=False)

    docker.cleanups.append((f"compose project {project} and its volume", down))
    run([*base, "up", "-d", "--no-build", "egemma"], env=env)
    name = run([*base, "ps", "-q", "egemma"], env=env).stdout.strip()
    seconds = wait_healthy(docker, name)
    status, body = http_json(f"http://127.0.0.1:{port}/health")
    check("compose up: healthy and serving /health", status == 200, f"{seconds:.0f} s")


# -- the run -----------------------------------------------------------------------------------


def check_container(docker: Docker, tag: str) -> tuple[str, str, str]:
    """Steps 5: one container on a fresh data volume. Returns (volume, key, stored response id)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    volume = docker.volume(f"egemma-it-data-{os.getpid()}")
    name = docker.start(
        f"egemma-it-{os.getpid()}",
        "--network",
        "host",
        "-e",
        f"PORT={port}",
        "-v",
        f"{volume}:/data",
        tag,
    )
    seconds = wait_healthy(docker, name)
    check("HEALTHCHECK turns healthy", True, f"{seconds:.0f} s after start")
    check("the server runs as uid 10001 (seen from the host)", server_uid(docker, name) == "10001")
    keys = generated_keys(docker, name)
    check("the first-start key is printed once", len(keys) == 1, f"{len(keys)} time(s)")
    resp_id = check_api(base, keys[0])
    check_files(docker, name)
    check_stored_after_restart(docker, name, base, keys[0], resp_id)
    docker("stop", "-t", "45", name)
    return volume, keys[0], resp_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--llama-wheelhouse",
        type=Path,
        required=True,
        help="folder with the host's llama-cpp-python wheel for the image's flags",
    )
    parser.add_argument("--tag", default="egemma:image-test")
    args = parser.parse_args(argv)
    wheels = sorted(args.llama_wheelhouse.glob("llama_cpp_python-*.whl"))
    if not wheels:
        say(f"no llama-cpp-python wheel in {args.llama_wheelhouse} (make image-test builds it)")
        return 2
    started = time.monotonic()
    docker = Docker()
    sources = PipSources(args.llama_wheelhouse)
    figures: dict[str, str] = {}
    try:
        say("==> 1. Docker engine")
        docker.pick_cli()
        docker.ensure_engine(Path(tempfile.gettempdir()) / "egemma-image-test-dockerd.log")
        say(f"==> 2. base image {BASE_IMAGE}")
        ensure_base(docker)
        say("==> 3. build Dockerfile.cpu")
        build_args = sources.build_args(host_pip_settings(sys.executable))
        if not pytorch_index_reachable():
            say(
                "  download.pytorch.org is unreachable: torch (build time only) "
                "from the pip sources"
            )
            build_args["TORCH_PIP_ARGS"] = ""
        sources.start()
        docker.cleanups.append(("the pip sources server", sources.stop))
        figures["build"] = f"{build(docker, args.tag, build_args):.0f} s"
        say("==> 4. the image")
        figures["size"] = f"{check_image(docker, args.tag) / 1e9:.3f} GB"
        say("==> 5. a container with a data volume")
        volume, key, resp_id = check_container(docker, args.tag)
        say("==> 6. no network at run time")
        check_offline(docker, args.tag, volume, key, resp_id)
        say("==> 7. an unwritable /data")
        check_unwritable_data(docker, args.tag)
        say("==> 8. compose.yaml")
        check_compose(docker, args.tag)
    except CheckFailedError as exc:
        say(f"image-test FAILED: {exc}")
        return 1
    finally:
        docker.cleanup()
    figures["total"] = f"{time.monotonic() - started:.0f} s"
    say(f"image-test passed: {json.dumps(figures)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
