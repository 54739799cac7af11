"""The docs run as written: every ```bash block of README.md and of docs/*.md is executed, in file order,
in one bash session per file (`set -euo pipefail`), against a real `meshhook serve` process, so the
walk-throughs and the code cannot drift apart. ```sh blocks are shown, never run.

The only changes made to the text before running it: the service's address (`http://127.0.0.1:8000`)
and the local receiver's port (9999) become free ones, so the suite can run beside a developer's own
`serve`. The shell gets what a developer's second shell has: a `.venv/bin/meshhook` whose `token`
command mints tokens the service accepts (for a dev user kept in a fresh data dir), curl, openssl
and python3, and a fresh HOME."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests import support

DOCS = [support.ROOT / "README.md", *sorted((support.ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def bash_blocks(path: Path) -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text()) if lang == "bash"]


@pytest.fixture(scope="module")
def receiver_port() -> int:
    return support.free_port()


@pytest.fixture(scope="module")
async def docs_database(admin_url):
    """The docs' own database: the suite's other services run workers too, and any worker may claim
    any queued run of its database — one without the docs' egress exception would refuse their calls."""
    import asyncio
    import uuid

    from app.db.migrate import upgrade

    name = f"meshhook_docs_{uuid.uuid4().hex[:10]}"
    url = await support.create_database(admin_url, name)
    await asyncio.to_thread(upgrade, url)
    yield url
    await support.drop_database(admin_url, name)


@pytest.fixture(scope="module")
def docs_service(service_env, docs_database, receiver_port, tmp_path_factory):
    """A service of its own: the docs' local receiver needs an egress exception (MESHHOOK_EGRESS_ALLOW)."""
    env = {**service_env, "DATABASE_URL": docs_database, "MESHHOOK_EGRESS_ALLOW": f"127.0.0.1:{receiver_port}"}
    log = tmp_path_factory.mktemp("docs-service") / "api.log"
    proc, base = support.start_api(env, log)
    yield base, env
    proc.terminate()


def run_bash(script: str, *, cwd: Path, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    # Its own process group, so what a block leaves running in the background is stopped afterwards.
    proc = subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + script], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the docs' bash blocks did not finish in {timeout} s:\n{out[-4000:]}\n{err[-4000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def shell_env(service_env: dict, home: Path) -> dict:
    """A second shell as a developer has it: the service's settings that `meshhook token` reads."""
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update({k: service_env[k] for k in ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_JWT_SECRET")})
    env.update({"HOME": str(home), "MESHHOOK_DATA_DIR": str(home / "meshhook-data")})
    return env


def workdir(tmp_path: Path) -> Path:
    """Where the shell starts: like a checkout, it has .venv/bin/meshhook (the installed command)."""
    cwd = tmp_path / "checkout"
    (cwd / ".venv" / "bin").mkdir(parents=True)
    (cwd / ".venv" / "bin" / "meshhook").symlink_to(Path(sys.executable).parent / "meshhook")
    return cwd


def test_every_doc_with_commands_marks_them_bash_or_sh():
    for path in DOCS:
        for lang, body in FENCE.findall(path.read_text()):
            if "curl " in body or "python3 dev.py" in body:
                assert lang in ("bash", "sh"), (path.name, lang, body[:80])
    assert bash_blocks(support.ROOT / "README.md"), "the README's walk-through is a ```bash block"


# Docs with runnable (```bash) blocks; the others only show commands (```sh), e.g. the operations guide,
# whose deploy block tests/pooler/test_operations_guide.py runs against a real PgBouncer.
RUNNABLE = [p for p in DOCS if bash_blocks(p)]


def test_the_walkthroughs_are_runnable():
    assert {"README.md", "resume.md", "bulk-resume.md", "security.md"} <= {p.name for p in RUNNABLE}


@pytest.mark.parametrize("path", RUNNABLE, ids=[p.name for p in RUNNABLE])
def test_the_bash_blocks_run_as_written(path, docs_service, receiver_port, tmp_path):
    blocks = bash_blocks(path)
    base, env = docs_service
    script = "\n".join(blocks).replace("http://127.0.0.1:8000", base).replace("9999", str(receiver_port))
    cwd = workdir(tmp_path)
    proc = run_bash(script, cwd=cwd, env=shell_env(env, tmp_path / "home"))
    assert proc.returncode == 0, f"{path.name}: exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n" \
                                 f"--- stderr\n{proc.stderr[-6000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert sorted(p.name for p in cwd.iterdir()) == [".venv"], "the docs leave files in the working directory"
    check = CHECKS.get(path.name)
    if check is not None:
        check(proc.stdout)


def _readme(out: str) -> None:
    assert re.search(rf"run {UUID} is paused", out), out[-3000:]
    assert re.search(rf"resumed as run {UUID}: succeeded", out), out[-3000:]
    assert '"output":{"order":7,"amount":250}' in out.replace(" ", ""), out[-3000:]
    assert '"version":2' in out.replace(" ", ""), out[-3000:]


def _resume(out: str) -> None:
    assert re.search(rf"run {UUID}: failed", out), out[-3000:]
    assert '"reuse":["start"],"rerun":["call","done"]' in out.replace(" ", ""), out[-3000:]
    assert re.search(rf"resumed as run {UUID}: succeeded", out), out[-3000:]


CHECKS = {"README.md": _readme, "resume.md": _resume}


def test_the_dev_token_of_the_docs_is_for_one_user_across_shells(docs_service, tmp_path):
    """`export TOKEN=$(.venv/bin/meshhook token)` in two shells: the same user, who sees what the other made."""
    base, env = docs_service
    cwd, senv = workdir(tmp_path), shell_env(env, tmp_path / "home")
    name = f"docs-{uuid.uuid4().hex[:6]}"
    made = run_bash(f"""export TOKEN=$(.venv/bin/meshhook token)
curl -sf -X POST {base}/projects -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
  -d '{{"name": "{name}"}}' > /dev/null""", cwd=cwd, env=senv)
    assert made.returncode == 0, made.stderr
    seen = run_bash(f"""export TOKEN=$(.venv/bin/meshhook token)
curl -sf {base}/projects -H "Authorization: Bearer $TOKEN" """, cwd=cwd, env=senv)
    assert seen.returncode == 0 and name in seen.stdout, seen.stdout + seen.stderr
