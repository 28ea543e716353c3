"""Every example in README.md and docs/*.md, run for real: what users copy must work.

The stack is `make serve`'s default deployment, started once for the module: `hyv serve` from an
empty folder (its own redis-server, one Celery worker holding the bundled model weights/hyv-small,
the API without keys), plus a second API process with a key (`hyv serve --workers 0` on the same
Redis and data folder, as a production API process beside the first) for the examples that send
one.

Which fenced blocks run, by their language tag:

    bash, sh, shell, console    each command (continuation lines and quotes spanning lines joined)
                                runs with `bash -o pipefail -c`, in order, in a work folder of the
                                document; it must exit 0 and print no "command not found", and every
                                HTTP answer curl gets must be 2xx (a `curl` first on PATH has the
                                real one print each status)
    python, py                  the block runs as one script (`python`); it must exit 0, and every
                                HTTP answer it gets through httpx (the OpenAI SDK) or requests must
                                be 2xx
    json, text, yaml, mermaid   answers, file contents, diagrams: nothing to run

Any other tag, or none, fails `test_every_example_runs_or_is_skipped_with_a_reason`: give the block
a tag, or a runner here. A command that cannot run here (Docker, Kubernetes, GPUs, the 13B release,
hours of training, the long-running servers themselves) is skipped by an entry of SKIPS that says
why; every other command runs. So a new example fails this module unless it works against the
stack or is reviewed into SKIPS, and an entry of SKIPS that matches no command any more fails too.

Placeholders are filled in the way a reader would:

    http://127.0.0.1:8000   the keyless API in README.md and docs/service.md (`make serve`); the
                            keyed one in docs/api.md and docs/operations.md, whose examples send a key
    $H, $KEY                the keyed API's URL and its key (environment variables of each command)
    <id>, $ID, video_0123456789abcdef01234567
                            the video the document's last example created (read from curl's JSON
                            answer), once it has finished: the examples that use it download it
    $LAST_ID                `last_id` of the document's last list answer
    first_frame.png         in the work folder: the first frame of "a red circle moving up on a gray
                            background" (64x64), drawn by the training data's renderer
    .env                    in the work folder: HYV_API_KEYS=$KEY (the Docker deployment's file)
    KEY (Python)            defined before the block runs
    uuidgen                 provided (Python's uuid4) where the machine lacks it

Before `curl -C - ... -o FILE` (resuming a broken download) FILE is cut to half its size: the
broken download the example resumes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES: tuple[str, ...] = ("README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")))

SHELL_TAGS = frozenset({"bash", "sh", "shell", "console"})
PYTHON_TAGS = frozenset({"python", "py"})
NOT_RUN_TAGS = frozenset({"json", "text", "yaml", "mermaid"})

# What "http://127.0.0.1:8000" means in each document (see the module docstring).
DOCS_WITH_KEYS = frozenset({"docs/api.md", "docs/operations.md"})
DOC_HOST = "http://127.0.0.1:8000"
EXAMPLE_VIDEO_ID = "video_0123456789abcdef01234567"
KEY = "docs-example-key"
STATUS_MARK = "HYV-DOCS-HTTP-STATUS"

# NAME=value, NAME=$(...) or a quoted value, and nothing else on the line (but a comment).
ASSIGNMENT = re.compile(r"([A-Za-z_]\w*)=(\$\([^)]*\)|\"[^\"]*\"|'[^']*'|[^\s$]*)(\s+#.*)?")

STACK_READY_TIMEOUT_S = 240.0
VIDEO_TIMEOUT_S = 180.0
SHELL_TIMEOUT_S = 180.0
PYTHON_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Skip:
    """Commands matching `pattern` (re.search on the command, continuation lines joined) are not
    run, for `reason`."""

    pattern: str
    reason: str

    def matches(self, command: str) -> bool:
        return re.search(self.pattern, flat(command)) is not None


# Reviewed: every command of the docs that does not run here, and why.
SKIPS: tuple[Skip, ...] = (
    # The stack and the suite themselves.
    Skip(
        r"^make serve\b",
        "starts the long-running stack: this module starts the same one (`hyv serve` from an empty "
        "folder) and runs the other examples against it",
    ),
    Skip(r"^make test\b", "the whole test suite, this module included"),
    Skip(r"^make bundle\b", "trains the bundled model from nothing: about 2 hours on 2 cores"),
    Skip(r"^hyv train bundle\b", "the bundled model's whole recipe: about 2 hours on 2 cores"),
    Skip(
        r"^hyv train export-teacher --run runs/bundle\b",
        "needs a recipe run's stage-4 DiT (runs/bundle: the recipe's hours of training); "
        "tests/training/test_teacher_export.py runs the command on a stand-in run",
    ),
    Skip(
        r"^hyv train lora(-eval)? ",
        "trains (about 7 minutes on 2 cores) or evaluates (about 3) the demonstration LoRA adapter, "
        "over the committed one; tests/training/test_lora.py runs the trainer on a tiny bundle and "
        "tests/engine/test_bundle_lora.py the committed adapter",
    ),
    Skip(
        r"^hyv train vae \| dit \| distill \| eval --help",
        "names the stages vae, dit, distill and eval with `|`: not a shell pipeline",
    ),
    Skip(
        r"^(HYV_\w+=\S+ )*hyv (serve|worker)\b",
        "a long-running server or worker (production ones on their own Redis and GPUs); the stack "
        "here is `hyv serve`'s own",
    ),
    # GPUs and the 13B release.
    Skip(
        r"^make install TORCH_PIP_ARGS=",
        "installs torch's CUDA build from download.pytorch.org: a GPU machine's setup",
    ),
    Skip(
        r"^\.venv/bin/pip install -e '\.\[gpu\]'",
        "compiles flash-attn and xformers against CUDA: a GPU machine's setup",
    ),
    Skip(
        r'^hyv generate "\.\.\." --sp 2\b',
        'the prompt is elided ("..."): the line shows the flag (sequence parallelism is tested in '
        "tests/engine/test_parallel.py)",
    ),
    Skip(r"^torchrun --nproc-per-node 8 ", "8 GPUs and the 13B release (W and T stand for its folders)"),
    Skip(r"^hyv init-weights --preset hunyuan-video-13b\b", "writes 13B random weights: about 26 GB in bf16"),
    Skip(
        r"^hyv (generate .*--weights|convert) /path/to/",
        "the official HunyuanVideo release on disk (tens of GB; nothing is downloaded here)",
    ),
    # Hosts, containers, clusters, object storage.
    Skip(
        r"^curl -fsSL https://nvidia\.github\.io/",
        "installs the NVIDIA Container Toolkit's apt source on a GPU host (root, network)",
    ),
    Skip(r"^sudo ", "system setup of a GPU host (root)"),
    Skip(r"^docker ", "builds and starts containers (tests/deploy checks the compose files)"),
    Skip(
        r"^cp \.env\.example \.env$|^sed -i .* \.env$",
        "writes the Docker deployment's .env into the checkout (tests/deploy checks .env.example)",
    ),
    Skip(
        r"^cp /path/from/box1/\.env |^echo \".*\" >> \.env$",
        "another box's .env in a multi-box deployment",
    ),
    Skip(r"^HYV_WEIGHTS=/weights/hunyuan-video-13b$", "a line of a 13B deployment's .env, not a command"),
    Skip(
        r"^mc ",
        "MinIO's client against a MinIO server (S3 storage is tested in tests/service/test_storage_s3.py)",
    ),
    Skip(
        r"^cd deploy/k8s$|^kustomize |^kubectl |^cp secrets\.env\.example ",
        "a Kubernetes cluster (tests/deploy/test_k8s.py checks the manifests)",
    ),
    Skip(
        r"\| ffplay -$",
        "plays the stream in a video player; the same stream is downloaded by the `-o video.mp4` "
        "example before it",
    ),
)


@dataclass(frozen=True)
class Example:
    """A fenced block (`language` its tag), or one command of a shell block (`language` "shell")."""

    doc: str
    line: int  # of the block's opening fence, or of the command's first line
    language: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def flat(command: str) -> str:
    """The command on one line: continuation lines joined, runs of spaces made one."""
    return re.sub(r"\s+", " ", command.replace("\\\n", " ")).strip()


_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<tag>\S*)[ \t]*$")


def fenced_blocks(doc: str) -> list[Example]:
    """The fenced code blocks of a document (also those indented inside lists), dedented."""
    lines = (ROOT / doc).read_text().splitlines()
    blocks: list[Example] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent = opening["indent"]
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{doc}:{index + 1}: a code block that is never closed")
        body = [line.removeprefix(indent) for line in lines[index + 1 : end]]
        blocks.append(Example(doc, index + 1, opening["tag"], "\n".join(body)))
        index = end + 1
    return blocks


def shell_commands(block: Example) -> list[Example]:
    """The commands of a shell block: comment lines dropped, a command going on over continuation
    lines or inside a quote that spans lines kept whole."""
    commands: list[Example] = []
    pending: list[str] = []
    first = 0
    for offset, line in enumerate(block.code.splitlines()):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending:
            first = offset
        pending.append(line)
        text = "\n".join(pending)
        if text.endswith("\\"):
            continue
        try:
            shlex.split(text, comments=True)
        except ValueError:  # a quote still open: the command goes on on the next line
            continue
        commands.append(Example(block.doc, block.line + 1 + first, "shell", text.strip()))
        pending = []
    if pending:
        raise ValueError(f"{block.where}: unbalanced quotes in {' '.join(pending)!r}")
    return commands


def examples(doc: str) -> list[Example]:
    """The document's examples in order: shell commands one by one, other blocks whole."""
    found: list[Example] = []
    for block in fenced_blocks(doc):
        if block.language in SHELL_TAGS:
            found.extend(shell_commands(block))
        else:
            found.append(block)
    return found


def skip_for(example: Example) -> Skip | None:
    if example.language != "shell":
        return None
    return next((skip for skip in SKIPS if skip.matches(example.code)), None)


def runnable(doc: str) -> list[Example]:
    return [e for e in examples(doc) if e.language in {"shell", *PYTHON_TAGS} and skip_for(e) is None]


RUN_DOCS = [doc for doc in DOC_FILES if runnable(doc)]


# --- the inventory (no servers) --------------------------------------------------------------------


def test_every_example_runs_or_is_skipped_with_a_reason() -> None:
    problems: list[str] = []
    used: set[Skip] = set()
    counts: dict[str, int] = {}
    for doc in DOC_FILES:
        for example in examples(doc):
            language = example.language
            if language not in {"shell", *PYTHON_TAGS, *NOT_RUN_TAGS}:
                problems.append(
                    f"{example.where}: a ```{language} block: no runner for it here; tag it "
                    f"({', '.join(sorted(SHELL_TAGS | PYTHON_TAGS | NOT_RUN_TAGS))}) or add a runner"
                )
                continue
            skip = skip_for(example)
            if skip is not None:
                used.add(skip)
                continue
            if language in NOT_RUN_TAGS:
                continue
            counts[doc] = counts.get(doc, 0) + 1
            # Stand-ins only a reader can fill: the example cannot run as written.
            unfilled = re.findall(r"/path/to/|\"\.\.\.\"|<(?!id>)[a-z_]+>", example.code)
            if unfilled:
                problems.append(
                    f"{example.where}: runs, but has placeholders {unfilled} that this test does "
                    f"not fill; make it runnable or add a reviewed entry to SKIPS:\n{example.code}"
                )
    for skip in SKIPS:
        if skip not in used:
            problems.append(f"SKIPS entry {skip.pattern!r} matches no example any more: remove it")
    assert not problems, "\n".join(problems)
    # The extraction found what the docs are known to hold (a broken parser would run nothing).
    assert counts.get("README.md", 0) >= 6, counts
    assert counts.get("docs/api.md", 0) >= 15, counts
    assert "docs/operations.md" in counts, counts


def test_commands_are_split_the_way_bash_reads_them() -> None:
    block = Example(
        "x.md",
        10,
        "bash",
        "# a comment line\n"
        "curl -s $H/v1/videos \\\n"
        '  -d \'{"prompt": "a red circle moving right on a black background",\n'
        "       \"seed\": 1}'   # a comment with it's apostrophe\n"
        "\n"
        'hyv generate "a" --out x.mp4\n',
    )
    commands = shell_commands(block)
    assert [c.line for c in commands] == [12, 16]
    assert flat(commands[0].code).startswith('curl -s $H/v1/videos -d \'{"prompt"')
    assert commands[1].code == 'hyv generate "a" --out x.mp4'
    indented = fenced_blocks("README.md")
    assert any(b.code.startswith("docker compose up -d --build") for b in indented)  # inside a list
    assert skip_for(Example("x.md", 1, "shell", "hyv generate 'a new example' --frames 17")) is None


# --- the stack ---------------------------------------------------------------------------------------


@dataclass
class DocsStack:
    """`hyv serve` (Redis, a worker with the bundled model, the keyless API) and a keyed API."""

    root: Path
    url: str = ""
    keyed_url: str = ""
    redis_url: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def hyv_command() -> str:
    """The `hyv` script of this virtualenv: the examples call it from PATH."""
    script = Path(sys.executable).with_name("hyv")
    if not script.exists():
        raise FileNotFoundError(f"no hyv script beside {sys.executable}: install the project (make install)")
    return str(script)


def user_env() -> dict[str, str]:
    """This session's environment without its HYV_* settings and metrics folder: a user's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYV_", "OPENAI_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _answers(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_up(stack: DocsStack, process: subprocess.Popen[bytes], log: str, check: str, key: bool) -> None:
    headers = {"Authorization": f"Bearer {KEY}"} if key else None
    deadline = time.monotonic() + STACK_READY_TIMEOUT_S
    while not _answers(check, headers):
        if process.poll() is not None:
            raise RuntimeError(f"{log} exited with {process.returncode}:\n{stack.log(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{check} not ready in {STACK_READY_TIMEOUT_S} s:\n{stack.log(log)}")
        time.sleep(0.2)


def _start(stack: DocsStack, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    with (stack.root / f"{name}.log").open("ab") as out:
        process = subprocess.Popen(
            [hyv_command(), *args],
            cwd=stack.root / "serve",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.processes.append(process)
    return process


@pytest.fixture(scope="module")
def docs_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocsStack]:
    from hyv.service.launcher import find_redis_server, free_port, stop_worker

    try:
        find_redis_server()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    stack = DocsStack(tmp_path_factory.mktemp("docs-stack"))
    (stack.root / "serve").mkdir()
    try:
        # `make serve` = `hyv serve` with every default, from the folder it runs in (data in ./data).
        port = free_port()
        serve = _start(stack, "serve", ["serve", "--port", str(port)], user_env())
        stack.url = f"http://127.0.0.1:{port}"
        _wait_up(stack, serve, "serve", f"{stack.url}/readyz", key=False)
        stack.redis_url = (stack.root / "serve" / "data" / "redis" / "url").read_text().strip()
        # The keyed API: another API process on the same Redis and data folder.
        keyed_port = free_port()
        env = user_env() | {
            "HYV_REDIS_URL": stack.redis_url,
            "HYV_API_KEYS": KEY,
            # Its own metrics folder: `hyv serve` clears the one it uses at start.
            "PROMETHEUS_MULTIPROC_DIR": str(stack.root / "keyed-metrics"),
        }
        keyed = _start(stack, "keyed", ["serve", "--workers", "0", "--port", str(keyed_port)], env)
        stack.keyed_url = f"http://127.0.0.1:{keyed_port}"
        _wait_up(stack, keyed, "keyed", f"{stack.keyed_url}/readyz", key=True)
        yield stack
    finally:
        # SIGTERM to each process group (hyv serve then stops its worker and Redis), SIGKILL after 60 s.
        for process in reversed(stack.processes):
            stop_worker(process, grace_s=60.0)


# --- running the examples ----------------------------------------------------------------------------

CURL_WRAPPER = """#!/bin/sh
# curl, printing each transfer's HTTP status on stderr for tests/docs/test_doc_examples.py.
exec {curl} --write-out '%{{stderr}}{mark} %{{http_code}}\\n' "$@"
"""
UUIDGEN = """#!/bin/sh
exec {python} -c 'import uuid; print(uuid.uuid4())'
"""

# Around a Python example: KEY defined, and every HTTP answer through httpx (which the OpenAI SDK
# uses) or requests recorded, so that a non-2xx answer the example does not check still fails it.
PYTHON_RUNNER = """\
import os
import sys

_not_2xx = []


def _audited(send):
    def send_and_record(self, request, *args, **kwargs):
        response = send(self, request, *args, **kwargs)
        if not 200 <= response.status_code < 300:
            _not_2xx.append(f"{request.method} {request.url} -> {response.status_code}")
        return response

    return send_and_record


def _audited_async(send):
    async def send_and_record(self, request, *args, **kwargs):
        response = await send(self, request, *args, **kwargs)
        if not 200 <= response.status_code < 300:
            _not_2xx.append(f"{request.method} {request.url} -> {response.status_code}")
        return response

    return send_and_record


import httpx

httpx.Client.send = _audited(httpx.Client.send)
httpx.AsyncClient.send = _audited_async(httpx.AsyncClient.send)
try:
    import requests
except ImportError:
    pass
else:
    requests.Session.send = _audited(requests.Session.send)

path = sys.argv[1]
with open(path) as source:
    code = compile(source.read(), path, "exec")
exec(code, {"__name__": "__main__", "KEY": os.environ["KEY"]})
if _not_2xx:
    sys.exit("HTTP answers other than 2xx: " + "; ".join(_not_2xx))
"""


def write_first_frame(path: Path) -> None:
    """The first frame the I2V examples' prompt ("a red circle moving up on a gray background")
    describes, as the training data draws it."""
    from PIL import Image

    from hyv.training.data import render_clip
    from hyv.training.data.grammar import ClipSpec

    spec = ClipSpec("red", "circle", "moving up", "gray", x=0.5, y=0.65, size=0.17)
    Image.fromarray(render_clip(spec, 1, 64)[0]).save(path)


@dataclass
class DocRun:
    """One document's examples in order, with the state they pass on (the video, the list page)."""

    stack: DocsStack
    doc: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    video_id: str | None = None
    ran: int = 0

    def __post_init__(self) -> None:
        bin_dir = self.workdir / ".bin"
        bin_dir.mkdir(parents=True)
        curl = shutil.which("curl")
        assert curl is not None, "curl is not installed"
        tools = {"curl": CURL_WRAPPER.format(curl=curl, mark=STATUS_MARK)}
        if shutil.which("uuidgen") is None:
            tools["uuidgen"] = UUIDGEN.format(python=sys.executable)
        for name, text in tools.items():
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        path = os.pathsep.join([str(bin_dir), str(Path(hyv_command()).parent), os.environ.get("PATH", "")])
        self.env = user_env() | {"PATH": path, "H": self.stack.keyed_url, "KEY": KEY}
        write_first_frame(self.workdir / "first_frame.png")
        (self.workdir / ".env").write_text(f"HYV_API_KEYS={KEY}\n")

    @property
    def server(self) -> str:
        return self.stack.keyed_url if self.doc in DOCS_WITH_KEYS else self.stack.url

    def fill(self, code: str) -> str:
        """The example with its placeholders filled (the video it names finished first)."""
        code = code.replace(DOC_HOST, self.server)
        if re.search(rf"<id>|{EXAMPLE_VIDEO_ID}|\$ID\b|\$\{{ID\}}", code):
            if self.video_id is None:
                raise LookupError("it names a video, and no earlier example of the document created one")
            self.wait_finished(self.video_id)
            code = code.replace("<id>", self.video_id).replace(EXAMPLE_VIDEO_ID, self.video_id)
        return code

    def wait_finished(self, video_id: str) -> None:
        from hyv.service.job_model import JobStatus
        from hyv.service.job_store import JobStore

        store = JobStore.from_url(self.stack.redis_url)
        deadline = time.monotonic() + VIDEO_TIMEOUT_S
        while True:
            job = store.jobs.get(video_id)
            if job is not None and job.finished:
                if job.status != JobStatus.COMPLETED:
                    raise LookupError(
                        f"the video it names, {video_id}, ended {job.status.value}: "
                        f"{job.error_code} {job.error_message}"
                    )
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the video it names, {video_id}, did not finish in {VIDEO_TIMEOUT_S} s")
            time.sleep(0.1)

    def run(self, example: Example) -> str | None:
        """Runs the example; None when it worked, else what went wrong."""
        try:
            code = self.fill(example.code)
        except (LookupError, TimeoutError) as error:
            return f"{example.where}: {error}\n{example.code}"
        self.ran += 1
        if example.language == "shell":
            return self.run_shell(example, code)
        return self.run_python(example, code)

    def execute(
        self, example: Example, argv: list[str], timeout_s: float, code: str
    ) -> subprocess.CompletedProcess[bytes] | str:
        """argv run in the work folder with the document's environment, its output captured; what
        went wrong (naming the example and its code) when it is still running after timeout_s."""
        try:
            return subprocess.run(
                argv, cwd=self.workdir, env=self.env, capture_output=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            return f"{example.where}: still running after {timeout_s} s\n{code}"

    def run_shell(self, example: Example, command: str) -> str | None:
        self.env["ID"] = self.video_id or ""
        assignment = ASSIGNMENT.fullmatch(flat(command))
        if assignment:  # NAME=value: later commands of the document see it
            command = f'{command}\nprintf %s "${assignment[1]}"'
        resumed = re.search(r"\s-C -\s.*-o (\S+)", flat(command))
        if resumed:  # the broken download it resumes
            target = self.workdir / resumed[1]
            with target.open("r+b") as partial:
                partial.truncate(target.stat().st_size // 2)
        done = self.execute(example, ["bash", "-o", "pipefail", "-c", command], SHELL_TIMEOUT_S, command)
        if isinstance(done, str):
            return done
        stdout = done.stdout.decode(errors="replace")
        lines = done.stderr.decode(errors="replace").splitlines()
        statuses = [line.split()[1] for line in lines if line.startswith(STATUS_MARK + " ")]
        stderr = "\n".join(line for line in lines if not line.startswith(STATUS_MARK + " "))
        problems = []
        if done.returncode != 0:
            problems.append(f"exit code {done.returncode}")
        if "command not found" in stderr:
            problems.append("a command it runs is not installed")
        bad = [s for s in statuses if not s.startswith("2") or len(s) != 3]
        if bad:
            problems.append(f"HTTP status {', '.join(bad)} (every answer must be 2xx)")
        if re.search(r"(^|[|;&(]\s*|\$\()curl\b", flat(command)) and not statuses:
            problems.append("curl ran and no HTTP status was recorded")
        if problems:
            return (
                f"{example.where}: {'; '.join(problems)}\n$ {command}\n"
                f"--- stdout\n{stdout[-2000:]}\n--- stderr\n{stderr[-3000:]}"
            )
        logger.info("%s: exit 0, HTTP %s", example.where, " ".join(statuses) or "-")
        if assignment:
            self.env[assignment[1]] = stdout
        self.remember(stdout)
        return None

    def remember(self, stdout: str) -> None:
        """The video a create answered with, or the last id of a list page."""
        try:
            answer = json.loads(stdout)
        except ValueError:
            return
        if isinstance(answer, dict):
            if answer.get("object") == "video" and isinstance(answer.get("id"), str):
                self.video_id = answer["id"]
            if answer.get("object") == "list" and answer.get("last_id"):
                self.env["LAST_ID"] = str(answer["last_id"])

    def run_python(self, example: Example, code: str) -> str | None:
        script = self.workdir / f"example_{example.line}.py"
        script.write_text(code)
        runner = self.workdir / ".run_example.py"
        runner.write_text(PYTHON_RUNNER)
        done = self.execute(example, [sys.executable, str(runner), str(script)], PYTHON_TIMEOUT_S, code)
        if isinstance(done, str):
            return done
        if done.returncode != 0:
            return (
                f"{example.where}: the Python example failed (exit code {done.returncode}; "
                f"line numbers count from the block's first line)\n{code}\n"
                f"--- stderr\n{done.stderr.decode(errors='replace')[-4000:]}"
            )
        logger.info("%s: the Python example ran (exit 0, every HTTP answer 2xx)", example.where)
        return None


@pytest.mark.slow
@pytest.mark.servers
@pytest.mark.parametrize("doc", RUN_DOCS)
def test_the_examples_of(doc: str, docs_stack: DocsStack, tmp_path: Path) -> None:
    run = DocRun(docs_stack, doc, tmp_path / "work")
    failures = [problem for example in runnable(doc) if (problem := run.run(example)) is not None]
    assert not failures, f"{len(failures)} of the examples of {doc} failed:\n\n" + "\n\n".join(failures)
    assert run.ran == len(runnable(doc))


@pytest.mark.slow
@pytest.mark.servers
def test_a_broken_example_fails_and_says_why(docs_stack: DocsStack, tmp_path: Path) -> None:
    """The checks bite: a non-2xx answer (curl, the SDK, requests without raise_for_status; a
    prompt the model cannot follow), a failing CLI, a missing tool and a video nobody created each
    fail the example, named."""
    run = DocRun(docs_stack, "docs/api.md", tmp_path / "work")
    create = (
        'curl -s $H/v1/videos -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" '
        '-d \'{"prompt": "a red circle moving right on a black background", "steps": 12}\''
    )
    off_vocabulary = (
        'curl -s $H/v1/videos -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" '
        '-d \'{"prompt": "the circle starts moving up"}\''
    )
    sdk = (
        "from openai import OpenAI\n"
        'client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY)\n'
        'client.videos.create(prompt="a red circle moving right on a black background", '
        'extra_body={"steps": 12})\n'
    )
    unchecked = (  # no raise_for_status(): the answer is not looked at
        "import os\nimport requests\n"
        'auth = {"Authorization": "Bearer " + KEY}\n'
        'requests.get(os.environ["H"] + "/v1/videos/video_missing", headers=auth)\n'
    )
    missing = "GET " + docs_stack.keyed_url + "/v1/videos/video_missing -> 404"
    cases = [
        ("shell", create, "HTTP status 422"),
        ("shell", off_vocabulary, "prompt_outside_vocabulary"),
        ("shell", 'curl -s $H/v1/models -H "Authorization: Bearer wrong"', "HTTP status 401"),
        ("shell", 'hyv generate "a red circle moving right on a black background" --frames 18', "exit code"),
        ("shell", "no-such-tool --version", "is not installed"),
        ("shell", 'curl -s $H/v1/videos/$ID -H "Authorization: Bearer $KEY"', "no earlier example"),
        ("python", sdk, "UnprocessableEntityError"),
        ("python", unchecked, missing),
    ]
    for line, (language, code, expected) in enumerate(cases, start=1):
        problem = run.run(Example("x.md", line, language, code))
        assert problem is not None and expected in problem, (code, problem)
        assert problem.startswith(f"x.md:{line}: ")
