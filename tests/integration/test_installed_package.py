"""What the image holds, run: the wheel `pip wheel .` builds (as the Dockerfile does), installed with
requirements.lock's hashed pins into a clean virtualenv outside the checkout, and every process started
from that virtualenv against the local stack: `db migrate`, `topics create`, `worker`, `api`. An event
sent through the API is counted. A module or data file the wheel leaves out (the linked api/, streams/,
schemas/ folders, the migrations, openapi.json, the local Kafka templates) fails here, not in
production. Every process logs JSON lines (STRIPEMETER_LOG_FORMAT=json)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stripemeter.adapters.kafka.admin import delete_topics_of
from stripemeter.domain.config import Settings, settings_env
from stripemeter.tools.lockfile import LOCKFILE
from tests.integration.harness import isolated_settings

ROOT = Path(__file__).resolve().parents[2]
# the environment a process of the checkout's virtualenv or of a developer's shell would pass on
# the linked folders, imported from the virtualenv: their modules and where they are
IMPORTS = "import stripemeter.api.app, stripemeter.streams.worker_app as s; print(s.__file__)"
LEAKS = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONSAFEPATH")


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (
        f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
    )
    return done.stdout + done.stderr


def dockerfile_sources() -> list[str]:
    """What the Dockerfile copies into its build of the wheel (the lockfile aside)."""
    copies = re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    return [name for line in copies for name in line.split() if name != LOCKFILE]


def expected_files() -> set[str]:
    """Every file of the package tree as the checkout has it, links followed: the wheel must hold each."""
    found = set()
    for folder, dirs, files in os.walk(ROOT / "stripemeter", followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if not name.endswith((".pyc", ".pyo")):
                found.add(os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/"))
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel, built and installed as the image does; yields the virtualenv's bin folder."""
    work = tmp_path_factory.mktemp("installed")
    started = time.monotonic()
    # built from what the Dockerfile copies, in a folder of its own: the checkout's build/ could hold
    # files a build no longer makes (a stale copy would hide a missing one)
    source = work / "src"
    for name in dockerfile_sources():
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=ignore)
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-q",
        "--wheel-dir",
        work / "dist",
        source,
        cwd=work,
    )
    [wheel] = (work / "dist").glob("stripemeter-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = sorted(expected_files() - names)
    assert not missing, f"the wheel leaves out {missing}"
    for data in ("stripemeter/api/contract/openapi.json", "stripemeter/tools/local/kafka/pom.xml"):
        assert data in names
    migrations = "stripemeter/schemas/contract/migrations/"
    assert any(n.startswith(migrations + "0001_") and n.endswith(".sql") for n in names)
    built = time.monotonic()
    venv = work / "venv"  # a clean one: no --system-site-packages, so a dependency not locked is missing
    run(sys.executable, "-m", "venv", venv, cwd=work)
    pip: list[str | Path] = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check", "-q"]
    run(*pip, "install", "--require-hashes", "--only-binary=:all:", "-r", ROOT / LOCKFILE, cwd=work)
    run(*pip, "install", "--no-deps", wheel, cwd=work)
    print(f"wheel built in {built - started:.1f}s, installed in {time.monotonic() - built:.1f}s")
    yield venv / "bin"


def clean_env(bin_dir: Path, settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKS and not k.startswith("STRIPEMETER_")}
    return {
        **env,
        **settings_env(settings),
        "STRIPEMETER_LOG_FORMAT": "json",
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
    }


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return error.code, bytes(error.read())


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"{url}: the process exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            if get(url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout}s:\n{log.read_text()[-4000:]}")


def sample(exposition: str, name: str) -> float:
    """The value of the unlabelled series ``name`` in a /metrics page."""
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not exported")


def json_lines(log: Path) -> list[dict[str, object]]:
    """Each line of a process's output as the JSON object it must be."""
    entries = []
    for line in log.read_text().splitlines():
        if line.strip():
            try:
                entries.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"{log.name}: not a JSON line: {line!r}") from None
    return entries


async def test_the_installed_wheel_runs_every_process(
    installed: Path, stack: Settings, tmp_path: Path
) -> None:
    started = time.monotonic()
    settings = isolated_settings(stack, tmp_path)
    env = clean_env(installed, settings)
    here = tmp_path / "run"  # outside the checkout: nothing imports from it
    here.mkdir()
    where = run(installed / "python", "-c", IMPORTS, cwd=here, env=env)
    assert where.strip().startswith(str(installed.parent)), where

    procs: list[subprocess.Popen[bytes]] = []
    try:
        # a command's result goes to stdout (for people and scripts), logs to stderr: the logs are JSON;
        # the long-running processes print nothing else, so both of their streams are
        logs = {name: tmp_path / f"{name}.log" for name in ("migrate", "topics", "worker", "api")}
        for name, command in (("migrate", ("db", "migrate")), ("topics", ("topics", "create"))):
            with logs[name].open("wb") as err:
                done = subprocess.run(
                    [installed / "stripemeter", *command],
                    cwd=here,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    timeout=120,
                )
            assert done.returncode == 0, logs[name].read_text()
            assert done.stdout.strip(), f"{name} said nothing"
        for name in ("worker", "api"):
            with logs[name].open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [installed / "stripemeter", name],
                        cwd=here,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        worker, api = procs
        wait_ready(f"http://127.0.0.1:{settings.worker_web_port}/health/ready", worker, logs["worker"])
        base = f"http://127.0.0.1:{settings.api_port}"
        wait_ready(f"{base}/health/ready", api, logs["api"])

        tenant = f"inst-{uuid.uuid4().hex[:8]}"
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        event = {
            "tenantId": tenant,
            "metric": "requests",
            "customerRef": "acme",
            "quantity": 7,
            "ts": hour.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "idempotencyKey": "k-1",
        }
        request = urllib.request.Request(
            f"{base}/v1/events/ingest",
            data=json.dumps({"events": [event]}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202, response.read()
        history = f"{base}/v1/usage/history?tenantId={tenant}&metric=requests&customerRef=acme"
        deadline = time.monotonic() + 60
        total = None
        while time.monotonic() < deadline:
            status, body = get(history)
            assert status == 200, body
            if (total := json.loads(body)["total"]) == 7:
                break
            time.sleep(0.25)
        assert total == 7, f"the event was not counted:\n{logs['worker'].read_text()[-4000:]}"
        # the gauges behind the memory, volume and reconciliation alerts, as the scrape sees them
        worker_metrics = get(f"http://127.0.0.1:{settings.worker_web_port}/metrics")[1].decode()
        assert sample(worker_metrics, "stripemeter_data_dir_size_bytes") > 0
        assert sample(worker_metrics, "stripemeter_data_dir_free_bytes") > 0
        assert sample(worker_metrics, "stripemeter_reconciliation_interval_seconds") == 0  # no Stripe here
        api_metrics = get(f"{base}/metrics")[1].decode()
        assert sample(api_metrics, "stripemeter_memory_working_set_bytes") >= 0
        assert sample(api_metrics, "stripemeter_memory_limit_bytes") >= 0
        print(f"migrate, topics, worker, api and one event counted in {time.monotonic() - started:.1f}s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(10)
        await delete_topics_of(settings.kafka, settings.app_id, settings.topic_prefix)

    for name, log in logs.items():  # JSON lines from every process, the worker's stages included
        entries = json_lines(log)
        assert entries or name == "migrate", f"{name} logged nothing"
        for entry in entries:
            assert {"time", "level", "logger", "message"} <= entry.keys(), (name, entry)
    worker_loggers = {str(e["logger"]) for e in json_lines(logs["worker"])}
    assert any(name.startswith("faust") for name in worker_loggers), worker_loggers
