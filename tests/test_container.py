"""The container image (container/Containerfile), built and run for real with podman.

No image registry is reachable here, so the session makes the `FROM` image
itself: `mmdebstrap --variant=minbase bookworm` into a tarball, imported as
docker.io/library/debian:bookworm-slim (the name `FROM debian:bookworm-slim`
resolves to), then builds the Containerfile users build, with `--pull=never`.
Everything lives in podman storage of the session's own (`--root`/`--runroot`
under one temporary directory), so a developer's images are never touched.

Host quirks handled here, not in the image: crun fails on these hosts' hybrid
cgroups (so `--runtime runc`); podman's default rlimits for root exceed what the
host grants (so a containers.conf with smaller ones); TLS to PyPI may be
intercepted by a proxy whose CA only the host trusts (so the build's RUN steps
see the host's CA bundle through a pip.conf mounted for the build only).

Containers talk to nothing but loopback: `--network=none`, except the chat
tests (`--network=host`), where agentd reaches tests/fake_gemini.py on
127.0.0.1. The host's agentctl (root, hence admin) reaches the daemon through
the socket volume's directory on the host.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from tests.conftest import REPO, TEST_API_KEY, gemini_env, run_agentctl, wait_until
from tests.fake_gemini import FakeGemini, answer, hang

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

SBIN_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS: Final = ("podman", "runc", "mmdebstrap")
BASE_IMAGE: Final = "docker.io/library/debian:bookworm-slim"
IMAGE: Final = "localhost/agentd:test"
AGENTD_UID: Final = 10001
EX_CONFIG: Final = 78
ENGINE_STOP_TIMEOUT_S: Final = 10.0  # docker's and podman's default for `stop`
SECRETS: Final = ("db-key", "gemini-api-key")


def unavailable_reason() -> str | None:
    """Why podman tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "container tests need root (podman with runc and its own storage)"
    missing = [tool for tool in TOOLS if shutil.which(tool, path=SBIN_PATH) is None]
    if missing:
        return (
            f"container tests need {', '.join(missing)}: "
            "apt-get install podman runc mmdebstrap (.ci/run does)"
        )
    return None


def run_tool(
    command: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@dataclass(frozen=True)
class Podman:
    """podman on the session's own storage, with the host workarounds applied."""

    base: Path
    env: dict[str, str]

    def command(self, *args: str) -> list[str]:
        runc = shutil.which("runc", path=SBIN_PATH)
        assert runc is not None
        return [
            "podman",
            "--root",
            str(self.base / "storage"),
            "--runroot",
            str(self.base / "run"),
            "--runtime",
            runc,
            *args,
        ]

    def run(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = run_tool(self.command(*args), self.env, timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)}: exit {result.returncode}\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    def inspect(self, name: str, template: str) -> str:
        return self.run("inspect", name, "--format", template).stdout.strip()

    def volume_path(self, name: str) -> Path:
        return Path(
            self.run("volume", "inspect", name, "--format", "{{.Mountpoint}}").stdout.strip()
        )


def write_host_config(base: Path) -> dict[str, str]:
    """containers.conf, registries.conf and a build-only pip.conf; the env that selects them."""
    # File locks under our own tmp_dir: podman's default shm locks are one host-wide
    # segment, which storages of different roots would share and collide in.
    # Networks (podman-compose creates one) are defined in our directory, not the host's.
    (base / "containers.conf").write_text(
        '[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n'
        f'[engine]\nlock_type = "file"\ntmp_dir = "{base / "tmp"}"\n'
        f'[network]\nnetwork_config_dir = "{base / "networks"}"\n'
    )
    # Short names resolve to local images only: nothing is ever pulled.
    (base / "registries.conf").write_text("unqualified-search-registries = []\n")
    (base / "pip.conf").write_text("[global]\ncert = /etc/ssl/host-ca.pem\n")
    return {
        **os.environ,
        "PATH": SBIN_PATH,
        "CONTAINERS_CONF": str(base / "containers.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(base / "registries.conf"),
    }


def host_ca_bundle() -> str:
    """The CA bundle the host's own pip trusts (it may hold a TLS-inspecting proxy's CA)."""
    candidates = (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
        ssl.get_default_verify_paths().cafile,
    )
    return next(c for c in candidates if c and Path(c).is_file())


def import_base_image(podman: Podman) -> None:
    tarball = podman.base / "bookworm.tar"
    made = run_tool(["mmdebstrap", "--variant=minbase", "bookworm", str(tarball)], podman.env, 600)
    if made.returncode != 0:  # as a rule, the Debian mirror is out of reach
        pytest.skip(f"mmdebstrap could not make the base image: {made.stderr[-500:]}")
    podman.run("import", str(tarball), BASE_IMAGE, timeout=300)
    tarball.unlink()


def build_image(podman: Podman) -> None:
    podman.run(
        "build",
        "--pull=never",
        "--format",
        "docker",
        "--file",
        str(REPO / "container" / "Containerfile"),
        "--ignorefile",
        str(REPO / "container" / "Containerfile.dockerignore"),
        "--volume",
        f"{podman.base / 'pip.conf'}:/etc/pip.conf:ro",
        "--volume",
        f"{host_ca_bundle()}:/etc/ssl/host-ca.pem:ro",
        "--tag",
        IMAGE,
        str(REPO),
        timeout=900,
    )


def create_secrets(podman: Podman) -> None:
    values = {"db-key": os.urandom(32).hex() + "\n", "gemini-api-key": TEST_API_KEY + "\n"}
    for name in SECRETS:
        source = podman.base / name
        source.write_text(values[name])
        podman.run("secret", "create", name, str(source))


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    """The agentd image, built once per session from a locally made debian:bookworm-slim."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="adc-", dir="/tmp"))
    engine = Podman(base, write_host_config(base))
    try:
        import_base_image(engine)
        build_image(engine)
        create_secrets(engine)
        yield engine
    finally:
        engine.run("rm", "--all", "--force", "--time", "0", check=False)
        engine.run("system", "reset", "--force", check=False, timeout=300)
        shutil.rmtree(base, ignore_errors=True)


# -- one container -----------------------------------------------------------------


def agentctl_env() -> dict[str, str]:
    """The host's agentctl: this checkout's code, no AGENTD_* of the developer's."""
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "NO_COLOR": "1"}


@dataclass
class Container:
    podman: Podman
    name: str
    volumes: str  # prefix of the two named volumes: <volumes>-state, <volumes>-run

    @functools.cached_property  # the volumes exist once `podman run` made them
    def socket(self) -> Path:
        return self.podman.volume_path(f"{self.volumes}-run") / "agentd.sock"

    @functools.cached_property
    def state_dir(self) -> Path:
        return self.podman.volume_path(f"{self.volumes}-state")

    def agentctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return run_agentctl(agentctl_env(), "--socket", str(self.socket), *args, timeout=timeout)

    def chat_in_background(self, message: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "agentctl", "--socket", str(self.socket), "chat", message],
            env=agentctl_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def status(self) -> dict[str, Any]:
        result = self.agentctl("status", "--json")
        assert result.stdout, result.stderr.decode()
        reply: dict[str, Any] = json.loads(result.stdout)
        return reply

    def running(self) -> bool:
        return self.podman.inspect(self.name, "{{.State.Running}}") == "true"

    def exit_code(self) -> int:
        return int(self.podman.inspect(self.name, "{{.State.ExitCode}}"))

    def logs(self) -> str:
        result = self.podman.run("logs", self.name, check=False)
        return result.stdout + result.stderr

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if not self.running():
                raise AssertionError(f"container exited {self.exit_code()}:\n{self.logs()}")
            return self.socket.exists() and self.agentctl("ping").returncode == 0

        wait_until(ready, timeout, f"agentd in container {self.name} to answer")


StartContainer = Callable[..., Container]


@pytest.fixture
def start_container(podman: Podman) -> Iterator[StartContainer]:
    """Factory: a detached agentd container with both secrets and its two named volumes.

    start_container(network="none", env={}, secrets=SECRETS, volumes=None, extra=()) returns
    once agentd answers; `volumes` reuses another container's (a restart, an upgrade);
    `extra` are more `podman run` options.
    """
    made: list[Container] = []

    def start(
        *,
        network: str = "none",
        env: dict[str, str] | None = None,
        secrets: tuple[str, ...] = SECRETS,
        volumes: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> Container:
        name = f"agentd-{os.getpid()}-{len(made)}-{time.monotonic_ns() % 10**6}"
        container = Container(podman, name, volumes or name)
        made.append(container)
        options = run_options(container, network, env or {}, secrets)
        podman.run("run", "--detach", *options, *extra, IMAGE)
        container.wait_ready()
        return container

    yield start
    for container in made:
        podman.run("rm", "--force", "--time", "0", container.name, check=False)
    for prefix in {c.volumes for c in made}:
        podman.run("volume", "rm", "--force", f"{prefix}-state", f"{prefix}-run", check=False)


def run_options(
    container: Container, network: str, env: dict[str, str], secrets: tuple[str, ...]
) -> list[str]:
    options = [
        "--name",
        container.name,
        f"--network={network}",
        "--health-interval=disable",
        "--volume",
        f"{container.volumes}-state:/var/lib/agentd",
        "--volume",
        f"{container.volumes}-run:/run/agentd",
    ]
    for secret in secrets:  # as a user would: readable by the agentd uid only
        options += ["--secret", f"{secret},uid={AGENTD_UID},gid={AGENTD_UID},mode=0400"]
    for key, value in env.items():
        options += ["--env", f"{key}={value}"]
    return options


def fake_gemini_env(fake: FakeGemini) -> dict[str, str]:
    """The fake's address and test-sized timeouts; the key itself comes from the secret."""
    return {k: v for k, v in gemini_env(fake).items() if k != "GEMINI_API_KEY"}


# -- the image ---------------------------------------------------------------------


def test_image_runs_as_a_dedicated_non_root_user(podman: Podman) -> None:
    assert podman.inspect(IMAGE, "{{.Config.User}}") == "agentd"
    ids = podman.run("run", "--rm", "--network=none", "--entrypoint", "/usr/bin/id", IMAGE)
    assert ids.stdout.split()[0] == f"uid={AGENTD_UID}(agentd)"


def test_image_holds_no_compiler_nor_package_installer(podman: Podman) -> None:
    probe = "for t in gcc cc c++ cpp make ld as pip pip3; do command -v $t; done; true"
    found = podman.run(
        "run", "--rm", "--network=none", "--entrypoint", "/bin/sh", IMAGE, "-c", probe
    )
    assert found.stdout.split() == []


def test_image_declares_volumes_stop_signal_and_a_health_check(podman: Podman) -> None:
    config = json.loads(podman.inspect(IMAGE, "{{json .Config}}"))
    assert set(config["Volumes"]) == {"/var/lib/agentd", "/run/agentd"}
    assert config["StopSignal"] == "SIGTERM"
    assert config["Entrypoint"][0] == "/usr/bin/tini"
    check = json.loads(
        podman.run("image", "inspect", IMAGE, "--format", "{{json .HealthCheck}}").stdout
    )
    assert "agentctl health" in " ".join(check["Test"])


# -- running -----------------------------------------------------------------------


def test_host_agentctl_sees_ready_and_healthy_through_the_socket_volume(
    start_container: StartContainer, podman: Podman
) -> None:
    container = start_container(secrets=("db-key",))  # no Gemini key: degraded, yet healthy
    status = container.status()
    assert (status["state"], status["healthy"], status["profile"]) == ("READY", True, "production")
    assert container.agentctl("status").returncode == 0
    health = podman.run("healthcheck", "run", container.name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr


def test_volumes_pass_agentds_ownership_rules(start_container: StartContainer) -> None:
    container = start_container(secrets=("db-key",))
    for path, mode in (
        (container.socket.parent, 0o750),
        (container.state_dir, 0o700),
        (container.state_dir / "agentd.db", 0o600),
    ):
        info = path.lstat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (AGENTD_UID, mode), path


def test_without_a_db_key_secret_the_container_exits_78_naming_it(
    podman: Podman,
) -> None:
    """Production never generates a key: a forgotten secret must not start an empty store."""
    result = podman.run("run", "--rm", "--network=none", IMAGE, check=False, timeout=60)
    assert result.returncode == EX_CONFIG, result.stdout + result.stderr
    assert "db-key" in result.stderr


def test_secrets_bind_mounted_as_docker_and_compose_mount_them_are_read(
    start_container: StartContainer, tmp_path: Path
) -> None:
    """`docker run -v` and compose's `file:` secrets mount the host file as it is: owned
    by the image's uid, mode 0400 (as docs/container.md says), agentd reads both keys."""
    mounts: list[str] = []
    for name, value in (("db-key", os.urandom(32).hex()), ("gemini-api-key", TEST_API_KEY)):
        path = tmp_path / name
        path.write_text(value + "\n")
        os.chown(path, AGENTD_UID, AGENTD_UID)
        path.chmod(0o400)
        mounts += ["--volume", f"{path}:/run/secrets/{name}:ro"]
    container = start_container(secrets=(), extra=tuple(mounts))
    assert container.status()["components"]["gemini"]["reason"].startswith("key configured")
    assert "key from credential db-key" in container.logs()


def test_chat_reaches_the_fake_gemini_with_the_key_from_the_secret(
    start_container: StartContainer, fake_gemini: FakeGemini
) -> None:
    fake_gemini.push(answer("an answer from the fake"))
    container = start_container(network="host", env=fake_gemini_env(fake_gemini))
    chat = container.agentctl("chat", "hello from the host")
    assert chat.returncode == 0, chat.stderr.decode()
    assert chat.stdout.decode().strip() == "an answer from the fake"
    assert fake_gemini.requests[-1].api_key == TEST_API_KEY


def test_podman_stop_drains_an_in_flight_chat_and_exits_0(
    start_container: StartContainer, fake_gemini: FakeGemini, podman: Podman
) -> None:
    """1. A chat is at the model (the fake answers after 2 s).
    2. `podman stop` sends SIGTERM with the engine's default 10 s timeout.
    3. The chat still gets its whole answer, the container exits 0 before the timeout."""
    fake_gemini.push(answer("finished during the drain", delay_s=2.0))
    container = start_container(network="host", env=fake_gemini_env(fake_gemini))
    chat = container.chat_in_background("hi")
    fake_gemini.wait_for_requests(1, timeout=30)
    started = time.monotonic()
    podman.run("stop", container.name, timeout=60)
    assert time.monotonic() - started < ENGINE_STOP_TIMEOUT_S
    out, err = chat.communicate(timeout=30)
    assert (chat.returncode, out.decode().strip()) == (0, "finished during the drain"), err
    assert container.exit_code() == 0, container.logs()


def test_a_chat_outlasting_the_drain_grace_is_cut_before_the_engine_kills(
    start_container: StartContainer, fake_gemini: FakeGemini, podman: Podman
) -> None:
    """1. A chat hangs at the model, with no timeout of agentd's own to end it first.
    2. `podman stop`: SIGTERM, then SIGKILL after the engine's default 10 s.
    3. The image's drain grace (8 s) ends first: agentd marks the chat interrupted and
       exits 0 itself; with the production profile's 20 s it would be killed (137)."""
    fake_gemini.push(hang())
    slow_model = {"AGENTD_GEMINI__ATTEMPT_TIMEOUT_S": "60", "AGENTD_GEMINI__DEADLINE_S": "90"}
    container = start_container(network="host", env={**fake_gemini_env(fake_gemini), **slow_model})
    chat = container.chat_in_background("hi")
    fake_gemini.wait_for_requests(1, timeout=30)
    podman.run("stop", container.name, timeout=60)
    chat.communicate(timeout=30)
    assert container.exit_code() == 0, container.logs()
    assert "interrupted" in container.logs()


def test_a_new_container_on_the_same_volumes_restores_the_session(
    start_container: StartContainer, fake_gemini: FakeGemini, podman: Podman
) -> None:
    """1. Chat once; note the agent and its current session.
    2. Stop, remove the container, run a new one on the same volumes (a restart, an upgrade).
    3. Same agent, same current session, and the exchange is in its history."""
    first = start_container(network="host", env=fake_gemini_env(fake_gemini))
    assert first.agentctl("chat", "remember the lighthouse").returncode == 0
    before = first.status()
    podman.run("stop", first.name, timeout=60)
    podman.run("rm", first.name)
    second = start_container(
        network="host", env=fake_gemini_env(fake_gemini), volumes=first.volumes
    )
    after = second.status()
    assert (after["agent_id"], after["session_id"]) == (before["agent_id"], before["session_id"])
    history = second.agentctl("history")
    assert "remember the lighthouse" in history.stdout.decode()


def test_podman_logs_show_agentds_json_lines(start_container: StartContainer) -> None:
    """`podman logs` (and `docker logs`) show agentd's JSON lines, one record a line."""
    container = start_container(secrets=("db-key",))
    lines = [line for line in container.logs().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert any("ready on /run/agentd/agentd.sock" in r["message"] for r in records)


# -- compose -----------------------------------------------------------------------


def test_podman_compose_maps_the_compose_file_to_volumes_secrets_and_stop_timeout(
    podman: Podman, tmp_path: Path
) -> None:
    """podman-compose reads container/compose.yaml and would run the image with the two
    volumes, both secrets at /run/secrets/NAME, SIGTERM and a 10 s stop timeout
    (--dry-run: it prints the run and stop commands; the image is tagged so none is built)."""
    if shutil.which("podman-compose", path=SBIN_PATH) is None:
        pytest.skip("needs podman-compose: apt-get install podman-compose (.ci/run does)")
    podman.run("tag", IMAGE, "localhost/agentd:latest")
    project = tmp_path / "container"
    (project / "secrets").mkdir(parents=True)
    shutil.copy(REPO / "container" / "compose.yaml", project)
    for name in SECRETS:
        (project / "secrets" / name).write_text("placeholder\n")
    up, down = compose(podman, project, "up", "--detach"), compose(podman, project, "down")
    run_line = next(line for line in up.splitlines() if line.startswith("podman run "))
    for expected in (
        ":/var/lib/agentd",
        ":/run/agentd",
        "secrets/db-key:/run/secrets/db-key:ro",
        "secrets/gemini-api-key:/run/secrets/gemini-api-key:ro",
        "--stop-signal SIGTERM",
        "-e AGENTD_DAEMON__SHUTDOWN_GRACE_S=8",
        "localhost/agentd:latest",
    ):
        assert expected in run_line, (expected, run_line)
    stop_line = next(line for line in down.splitlines() if line.startswith("podman stop "))
    assert " -t 10 " in stop_line


def compose(podman: Podman, project: Path, *args: str) -> str:
    global_args = " ".join(podman.command()[1:])  # --root, --runroot, --runtime
    command = ["podman-compose", "--dry-run", "--podman-args", global_args]
    command += ["-f", str(project / "compose.yaml"), *args]
    result = run_tool(command, podman.env, 120, cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
