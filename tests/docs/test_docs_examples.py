"""Docs that run as written: the fenced code blocks of README.md and docs/*.md.

Every fenced block carries, on the line right before it, a one-line annotation
`<!-- example: KIND [ARGS] -->` that says how it is tested; a block without one, or
with an unknown one, fails `test_every_block_is_annotated`, so no example slips in
untested.

| kind | what the block is | how it is tested |
|---|---|---|
| `demo` | commands (bash) or Python | run in page order, in a demo home: a temporary git project with the repository's `params.yaml`, its state in `<project>/.lepton`, after `lepton demo` ran there once; each must exit 0 |
| `demo exit=N` | a command that fails on purpose | the same, but it must exit N and print an `error:` line |
| `live` | commands or Python for the live stack | tests/live/test_docs_examples_live.py: after `eval "$(lepton env)"`, against the live stack tests/live already starts |
| `repo` | commands run from the repository root (a quick benchmark) | run there, with Lepton's state in a temporary folder |
| `usage` | a synopsis with placeholders (`VERSION`, `[--json]`) | every `lepton` command in it exists and every option it shows is in that command's `--help`; every `make` target is in the Makefile |
| `output` | sample output | nothing to run |
| `output COMMAND` | sample output of COMMAND | each line has the shape of a line COMMAND printed here (ids, numbers and `<placeholders>` vary), in order |
| `file PATH` | a snippet of the config file PATH | loaded as Lepton loads PATH (params.yaml: `lepton_core.params.parse_params`) |
| `diagram` | a picture | nothing to run |
| `skip REASON` | what cannot run here (REASON in `SKIP_REASONS`) | the scripts, paths, options, tools and make targets it names exist |

Runnable blocks run with `bash -euo pipefail`; a page's blocks share one terminal
session's exported variables and working directory, in order. `curl` runs with
`--fail-with-body`, so an example request that gets an HTTP error fails the test
instead of printing the error and exiting 0.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_project

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MKDOCS_CONFIG = ROOT / "mkdocs.yml"
BIN = Path(sys.executable).parent  # the virtual environment's bin: lepton, python, prefect, mlflow

SKIP_REASONS = {
    "needs-docker": "needs a Docker engine (none on the development and CI machines)",
    "needs-kubernetes": "needs a Kubernetes cluster",
    "needs-gpu": "needs a CUDA device",
    "long-benchmark": "a benchmark at its published size (minutes); its script and options are checked",
    "make-test-itself": "`make test` itself, or what it already runs (the linters, pytest)",
}
RUNNABLE = {"bash", "sh", "console", "python"}
SHELL = {"bash", "sh", "console"}
OUTPUT_COMMANDS = {"lepton demo"}  # the commands whose output the demo home keeps
CONFIG_FILES = {"params.yaml"}
BLOCK_TIMEOUT = 300  # seconds for one block
CURL_STRICT = 'curl() { command curl --fail-with-body "$@"; }\n'

_ANNOTATION = re.compile(r"^\s*<!--\s*example:\s*(?P<spec>.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


# ---------------------------------------------------------------- the blocks
@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    spec: str | None  # the annotation after "example:", None when there is none

    @property
    def kind(self) -> str:
        return self.spec.split()[0] if self.spec else ""

    @property
    def args(self) -> list[str]:
        return self.spec.split()[1:] if self.spec else []

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"

    @property
    def expected_exit(self) -> int:
        return next((int(a.split("=", 1)[1]) for a in self.args if a.startswith("exit=")), 0)


def extract_blocks(text: str, page: Path) -> list[Block]:
    """The fenced blocks of a Markdown text, each with the annotation on the line
    right before its opening fence (if any)."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        info = m["info"].strip()
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body, j = [], i + 1
        while j < len(lines) and not close.match(lines[j]):
            body.append(lines[j][indent:] if not lines[j][:indent].strip() else lines[j])
            j += 1
        prev = _ANNOTATION.match(lines[i - 1]) if i else None
        blocks.append(
            Block(page, i + 1, info.split()[0] if info else "", "\n".join(body) + "\n", prev["spec"] if prev else None)
        )
        i = j + 1
    return blocks


def _nav_files(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out.extend(_nav_files(value) if isinstance(value, list) else [value])
    return out


def pages() -> list[Path]:
    """README.md, then the site's pages in the order of mkdocs.yml's nav (then any
    page left out of it, which mkdocs build --strict refuses anyway)."""
    ordered = [DOCS / f for f in _nav_files(yaml.safe_load(MKDOCS_CONFIG.read_text())["nav"])]
    return [README, *ordered, *sorted(set(DOCS.rglob("*.md")) - set(ordered))]


@functools.cache
def blocks_of(page: Path) -> tuple[Block, ...]:
    return tuple(extract_blocks(page.read_text(), page))


def all_blocks() -> list[Block]:
    return [b for p in pages() for b in blocks_of(p)]


def annotation_problem(b: Block) -> str | None:
    """Why the block's annotation is missing or wrong, or None when it is fine."""
    if b.spec is None:
        return "no `<!-- example: KIND -->` on the line right before the fence"
    kind, args = b.kind, b.args
    if kind == "demo":
        if any(not re.fullmatch(r"exit=([1-9]\d?|1\d\d|2[0-4]\d|25[0-5])", a) for a in args) or len(args) > 1:
            return f"`demo` takes only `exit=N` (N from 1 to 255), not {args}"
        if b.lang not in RUNNABLE:
            return f"`demo` needs a bash, sh, console or python block, not {b.lang or 'a plain one'}"
    elif kind in ("live", "repo"):
        if args:
            return f"`{kind}` takes no arguments"
        if b.lang not in (RUNNABLE if kind == "live" else SHELL):
            return f"`{kind}` needs a runnable block, not {b.lang or 'a plain one'}"
    elif kind == "usage":
        if args or b.lang not in SHELL:
            return "`usage` takes no arguments and needs a bash, sh or console block"
    elif kind == "output":
        if args and " ".join(args) not in OUTPUT_COMMANDS:
            return f"`output {' '.join(args)}`: the demo home keeps the output of {sorted(OUTPUT_COMMANDS)} only"
        if b.lang not in ("", "text", "console"):
            return "`output` is for a plain, text or console block"
    elif kind == "file":
        if len(args) != 1 or args[0] not in CONFIG_FILES:
            return f"`file` names one of {sorted(CONFIG_FILES)}"
        if b.lang not in ("yaml", "yml"):
            return "`file params.yaml` is for a yaml block"
    elif kind == "diagram":
        if args or b.lang not in ("", "text"):
            return "`diagram` takes no arguments and is for a plain or text block"
    elif kind == "skip":
        if len(args) != 1 or args[0] not in SKIP_REASONS:
            return f"`skip` takes one reason of {sorted(SKIP_REASONS)}"
    else:
        return f"unknown kind {kind!r}"
    return None


def test_every_block_is_annotated():
    problems = [f"{b.where}: {why}" for b in all_blocks() if (why := annotation_problem(b))]
    assert not problems, "fenced blocks without a valid example annotation:\n" + "\n".join(problems)
    assert len(all_blocks()) > 30  # the finder sees the blocks


def test_the_checker_refuses_what_it_should():
    page = ROOT / "x.md"
    text = (
        "```bash\nlepton status\n```\n"  # no annotation
        "<!-- example: demo -->\n\n```bash\nlepton status\n```\n"  # a blank line in between
        "<!-- example: maybe -->\n```bash\nx\n```\n"
        "<!-- example: skip too-slow -->\n```bash\nx\n```\n"
        "<!-- example: demo exit=0 -->\n```bash\nx\n```\n"
        "<!-- example: file other.yaml -->\n```yaml\na: 1\n```\n"
        "<!-- example: output lepton status -->\n```\nx\n```\n"
        "<!-- example: demo -->\n```\nnot a command\n```\n"
        "<!-- example: demo exit=2 -->\n~~~bash\nlepton retrain --set train.lr=inf\n~~~\n"
        "  <!-- example: diagram -->\n  ````\n  a ─► b\n  ````\n"
    )
    found = extract_blocks(text, page)
    assert [b.line for b in found] == [1, 6, 10, 14, 18, 22, 26, 30, 34, 38]
    assert [annotation_problem(b) is None for b in found] == [False] * 8 + [True, True]
    assert found[-2].expected_exit == 2 and found[-1].text == "a ─► b\n"


# ---------------------------------------------------------------- the live page shows `lepton env` first
_CLIENT = re.compile(r"^\s*(?:prefect|mlflow|curl)\s|\bimport mlflow\b|\$LEPTON_SERVE_TOKEN", re.MULTILINE)
_ENV = 'eval "$(lepton env)"'


def _first_client(text: str) -> int:
    m = _CLIENT.search(text)
    return m.start() if m else len(text) + 1


def _first_env(text: str) -> int:
    pos = text.find(_ENV)
    return pos if pos >= 0 else len(text) + 1


def test_stack_clients_run_after_lepton_env():
    """On the live platform page no client command (the prefect or mlflow CLI, the
    MLflow SDK, curl) comes before `eval "$(lepton env)"`; and a `live` example on any
    page has had it, in itself or in an earlier block of its page."""
    platform = "".join(b.text for b in blocks_of(DOCS / "platform.md"))
    assert _first_env(platform) < _first_client(platform), "docs/platform.md: a client before lepton env"
    problems = []
    for page in pages():
        seen = False
        for b in blocks_of(page):
            if b.kind == "live" and not seen and _first_client(b.text) < _first_env(b.text):
                problems.append(f"{b.where}: a client command before `{_ENV}`")
            seen = seen or _ENV in b.text
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- config snippets
def _file_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.kind == "file"]


def load_config_snippet(b: Block) -> None:
    """Load the snippet as Lepton loads its file: alone (every other section at its
    default) and in place of its sections in the repository's copy."""
    from lepton_core.params import parse_params

    (name,) = b.args
    assert name == "params.yaml"
    snippet = yaml.safe_load(b.text)
    assert isinstance(snippet, dict) and snippet, f"{b.where}: not a mapping of params sections"
    parse_params(snippet)
    parse_params({**yaml.safe_load((ROOT / name).read_text()), **snippet})


@pytest.mark.parametrize("block", _file_blocks(), ids=lambda b: b.where)
def test_config_snippets_load(block):
    load_config_snippet(block)


def test_a_wrong_config_snippet_fails():
    from lepton_core.params import ParamsError

    page = ROOT / "x.md"
    for body in ("sweep:\n  metrik: val_accuracy\n", "train:\n  epochs: -3\n", "- a list\n"):
        (b,) = extract_blocks(f"<!-- example: file params.yaml -->\n```yaml\n{body}```\n", page)
        with pytest.raises((ParamsError, AssertionError)):
            load_config_snippet(b)


# ---------------------------------------------------------------- command lines in a block
def command_lines(text: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines
    dropped (a console block's commands are its `$ ` lines)."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        line = re.split(r"(?:^|\s)#(?:\s|$)", line, maxsplit=1)[0].strip()
        if line:
            out.append(line)
    return out


@functools.cache
def _help(program: str, *path: str) -> tuple[int, str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    r = subprocess.run([program, *path, "--help"], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    return r.returncode, r.stdout + r.stderr


def _flags(text: str) -> list[str]:
    return re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z][\w-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.MULTILINE))


def usage_problems(b: Block) -> list[str]:
    problems = []
    for line in command_lines(b.text):
        words = line.split()
        if words[0] == "make":
            problems += [f"`{line}`: no make target {t!r}" for t in words[1:2] if t not in _make_targets()]
            continue
        if Path(words[0]).name != "lepton":
            problems.append(f"`{line}`: a usage block holds `lepton ...` and `make ...` lines only")
            continue
        rest = words[1:]
        # `lepton up | deploy | env | down`: one line for several commands
        if len(rest) >= 3 and rest[1] == "|":
            paths = [[w] for w in rest[::2]]
        else:
            paths = [[]]
            for w in rest:
                if not re.fullmatch(r"[a-z][a-z0-9-]*", w):
                    break
                paths[0].append(w)
        for path in paths:
            rc, text = _help(str(BIN / "lepton"), *path)
            usage = re.search(r"Usage:\s*lepton((?:\s+[a-z][a-z0-9-]*)*)", text)
            if rc != 0 or not usage or usage[1].split() != path:
                problems.append(f"`{line}`: `lepton {' '.join(path)}` is not a command (rc {rc})")
                continue
            problems += [
                f"`{line}`: `lepton {' '.join(path)} --help` has no {f}"
                for f in _flags(line)
                if not re.search(rf"(?<![\w-]){f}(?![\w-])", text)
            ]
    return problems


@pytest.mark.parametrize("block", [b for b in all_blocks() if b.kind == "usage"], ids=lambda b: b.where)
def test_usage_blocks_match_the_commands(block):
    problems = usage_problems(block)
    assert not problems, f"{block.where}:\n" + "\n".join(problems)


def test_a_wrong_usage_block_fails():
    (b,) = extract_blocks(
        "<!-- example: usage -->\n```bash\nlepton status [--json] [--verbose]\nlepton frobnicate\n"
        "lepton up | deploy | teleport\nmake no-such-target\ncurl x\n```\n",
        ROOT / "x.md",
    )
    problems = "\n".join(usage_problems(b))
    for needle in (
        "no --verbose",
        "`lepton frobnicate` is not",
        "`lepton teleport` is not",
        "'no-such-target'",
        "`curl x`",
    ):
        assert needle in problems, problems
    assert "has no --json" not in problems and "`lepton up` is not" not in problems


# ---------------------------------------------------------------- skipped blocks
def skipped_problems(b: Block) -> list[str]:
    """What a skipped block names that does not exist: make targets, files of the
    repository, the virtual environment's tools, a script's options, the tests a
    pytest line selects."""
    problems = []
    for line in command_lines(b.text):
        words = line.split()
        if words[0] == "make":
            problems += [f"`{line}`: no make target {t!r}" for t in words[1:2] if t not in _make_targets()]
            continue
        tool = words[0]
        if tool.startswith(".venv/bin/") and not (BIN / Path(tool).name).exists():
            problems.append(f"`{line}`: no {Path(tool).name} in the virtual environment")
        paths = [w for w in words[1:] if "/" in w and not w.startswith("-") and "=" not in w]
        problems += [f"`{line}`: no {p} in the repository" for p in paths if not (ROOT / p).exists()]
        script = words[1] if len(words) > 1 and words[1].endswith(".py") else None
        if script and Path(tool).name.startswith("python") and _flags(line) and (ROOT / script).exists():
            rc, text = _help(sys.executable, str(ROOT / script))
            problems += [
                f"`{line}`: `{script} --help` has no {f}" for f in _flags(line) if rc != 0 or f not in _flags(text)
            ]
        if Path(tool).name == "pytest" and "-k" in words:
            r = subprocess.run(
                [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *words[1:]],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=300,
            )
            if not re.search(r"^\d+(/\d+)? tests? (collected|selected)", r.stdout, re.MULTILINE):
                problems.append(f"`{line}`: selects no test\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
    return problems


@pytest.mark.parametrize("block", [b for b in all_blocks() if b.kind == "skip"], ids=lambda b: b.where)
def test_skipped_blocks_name_what_exists(block):
    problems = skipped_problems(block)
    assert not problems, f"{block.where} ({SKIP_REASONS[block.args[0]]}):\n" + "\n".join(problems)


def test_a_wrong_skipped_block_fails():
    (b,) = extract_blocks(
        "<!-- example: skip long-benchmark -->\n```bash\n.venv/bin/python benchmarks/sweep.py --trials 8 --frobs 2\n"
        "make no-such-target\nbash benchmarks/no_such.sh\n.venv/bin/no-such-tool .\n```\n",
        ROOT / "x.md",
    )
    problems = "\n".join(skipped_problems(b))
    for needle in ("has no --frobs", "'no-such-target'", "no benchmarks/no_such.sh", "no no-such-tool"):
        assert needle in problems, problems
    assert "has no --trials" not in problems


# ---------------------------------------------------------------- sample output
def output_shape(line: str) -> re.Pattern[str]:
    """A sample output line as a pattern: ids (hex), numbers and `<placeholders>`
    vary, the words and their order do not; runs of spaces are any whitespace."""
    parts = []
    for tok in line.split():
        if re.fullmatch(r"\d+(\.\d+)?", tok):
            parts.append(r"\d+(?:\.\d+)?")
            continue
        p = re.escape(tok)
        p = re.sub(r"<[a-z][a-z_-]*>", ".+", p)
        p = re.sub(r"[0-9a-f]{16,}", "[0-9a-f]+", p)
        parts.append(p)
    return re.compile(r"\s*" + r"\s+".join(parts) + r"\s*")


def shape_problems(sample: str, actual: str) -> list[str]:
    """Sample lines that no line of the real output matches, in order."""
    real, i, problems = actual.splitlines(), 0, []
    for line in (ln for ln in sample.splitlines() if ln.strip()):
        pattern = output_shape(line)
        j = next((k for k in range(i, len(real)) if pattern.fullmatch(real[k])), None)
        if j is None:
            problems.append(f"no line like {line.strip()!r} (after line {i} of the real output)")
        else:
            i = j + 1
    return problems


def test_output_shapes_tell_real_from_wrong():
    actual = (
        "noise\nmodel version   lepton-digits v1: promoted to @champion\n"
        "data version    6f998b20417f4fd571201fde04f8d8ab\n"
        "registry        local sqlite /tmp/x/.lepton/mlflow.db\n"
        "champion        v1  test accuracy 0.9861  macro-F1 0.9860\n"
    )
    sample = (
        "model version   lepton-digits v1: promoted to @champion\n"
        "data version    0123456789abcdef0123456789abcdef\n"
        "registry        local sqlite <project>/.lepton/mlflow.db\n"
        "champion        v1  test accuracy 0.9944  macro-F1 0.9944\n"
    )
    assert shape_problems(sample, actual) == []
    assert shape_problems(sample.replace("macro-F1", "micro-F1"), actual)
    assert shape_problems("data version 1\nmodel version   lepton-digits v1: promoted to @champion\n", actual)


# ---------------------------------------------------------------- running blocks
def _dump_env(path: Path) -> dict[str, str]:
    env = dict(item.split("=", 1) for item in path.read_text().split("\0") if "=" in item)
    env.pop("_", None)
    return env


def run_group(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run in a session of its own; on a timeout the whole process group (servers a
    command started included) is killed, and the test fails."""
    proc = subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {args}\n{out[-3000:]}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def run_block(
    b: Block, env: dict[str, str], cwd: Path, scratch: Path, prelude: str = "", timeout: float = BLOCK_TIMEOUT
) -> tuple[subprocess.CompletedProcess, dict[str, str], Path]:
    """Run one block as a reader would paste it into a terminal; the exported
    variables and the working directory it leaves are what the next block starts
    with. Python blocks run with the environment's Python."""
    scratch.mkdir(parents=True, exist_ok=True)
    stem = scratch / f"{b.page.stem}-{b.line}"
    if b.lang == "python":
        stem.with_suffix(".py").write_text(b.text)
        return run_group([str(BIN / "python"), str(stem.with_suffix(".py"))], env, cwd, timeout), env, cwd
    body = (
        b.text if b.lang != "console" else "\n".join(ln[2:] for ln in b.text.splitlines() if ln.startswith("$ ")) + "\n"
    )
    stem.with_suffix(".sh").write_text(CURL_STRICT + prelude + body)
    dump = stem.with_suffix(".env")
    r = run_group(
        [
            "bash",
            "-euo",
            "pipefail",
            "-c",
            'source "$0"; export PWD; env -0 > "$1"',
            str(stem.with_suffix(".sh")),
            str(dump),
        ],
        env,
        cwd,
        timeout,
    )
    if r.returncode or not dump.exists():
        return r, env, cwd
    after = _dump_env(dump)
    return r, after, Path(after.get("PWD", cwd))


def check_ran(b: Block, r: subprocess.CompletedProcess) -> None:
    said = f"{b.where} ({b.spec}):\n{b.text}\n--- exit {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}"
    assert r.returncode == b.expected_exit, said
    if b.expected_exit:  # an error example: one `error:` line, as the docs promise
        assert any(ln.startswith("error: ") for ln in r.stderr.splitlines()), said


def test_blocks_share_a_session_and_failures_fail(tmp_path):
    """The runner itself: exported variables and the working directory carry to the
    next block of a page, plain shell variables do not; a failing command, an
    unset variable, a failing stage of a pipe and an HTTP error from curl each end
    the block with a non-zero exit."""
    (tmp_path / "sub").mkdir()
    first, second, py, failing, error = extract_blocks(
        "<!-- example: demo -->\n```bash\nexport CARRIED=yes\nLOCAL=no\ncd sub\n```\n"
        '<!-- example: demo -->\n```bash\necho "$CARRIED ${LOCAL:-unset} $(basename "$PWD")"\n```\n'
        '<!-- example: demo -->\n```python\nimport os\nprint(os.environ["CARRIED"], os.path.basename(os.getcwd()))\n```\n'
        "<!-- example: demo -->\n```bash\nfalse | cat\necho not reached\n```\n"
        "<!-- example: demo exit=2 -->\n```bash\necho 'error: bad input' >&2\nexit 2\n```\n",
        tmp_path / "x.md",
    )
    env = {"PATH": os.environ["PATH"]}
    r, env, cwd = run_block(first, env, tmp_path, tmp_path / "s")
    check_ran(first, r)
    r, env, cwd = run_block(second, env, cwd, tmp_path / "s")
    assert r.stdout == "yes unset sub\n"
    r, _, _ = run_block(py, env, cwd, tmp_path / "s")
    assert r.stdout == "yes sub\n"
    r, _, _ = run_block(failing, env, cwd, tmp_path / "s")
    assert r.returncode != 0 and "not reached" not in r.stdout
    with pytest.raises(AssertionError):
        check_ran(failing, r)
    r, _, _ = run_block(error, env, cwd, tmp_path / "s")
    check_ran(error, r)
    (unset,) = extract_blocks("<!-- example: demo -->\n```bash\necho $NOT_SET\n```\n", tmp_path / "y.md")
    assert run_block(unset, env, cwd, tmp_path / "s")[0].returncode != 0

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b'{"error": "missing or wrong bearer token"}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/model"
        (b,) = extract_blocks(f"<!-- example: demo -->\n```bash\ncurl -s {url}\n```\n", tmp_path / "z.md")
        r, _, _ = run_block(b, env, cwd, tmp_path / "s")
        assert r.returncode == 22 and "missing or wrong bearer token" in r.stdout
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- the demo home
# Where a user's state would come from anything but the project folder.
_STATE_VARS = re.compile(r"^(LEPTON_|MLFLOW_TRACKING_|MLFLOW_REGISTRY_URI$|PREFECT_API_|PREFECT_HOME$|AWS_)")


@dataclass
class DemoHome:
    project: Path
    env: dict[str, str]
    scratch: Path
    outputs: dict[str, str]


def demo_env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _STATE_VARS.match(k)}
    env.update(
        {
            "LEPTON_PROJECT_DIR": str(project),
            "LEPTON_HOME": str(project / ".lepton"),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
        }
    )
    return env


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory) -> DemoHome:
    """A fresh project (a git repository with the repository's params.yaml) whose
    state lives in its own .lepton, after `lepton demo` ran there once."""
    base = tmp_path_factory.mktemp("docs-demo")
    project = make_project(base / "project")
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    env = demo_env(project)
    r = run_group([str(BIN / "lepton"), "demo"], env, project, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return DemoHome(project, env, base / "blocks", {"lepton demo": r.stdout})


def _pages_with(*kinds: str) -> list[Path]:
    return [p for p in pages() if any(b.kind in kinds for b in blocks_of(p))]


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("page", _pages_with("demo", "repo"), ids=lambda p: p.name)
def test_demo_examples_run(page, demo_home, tmp_path):
    env, cwd = dict(demo_home.env), demo_home.project
    repo_env = {**demo_env(ROOT), "LEPTON_HOME": str(tmp_path / "repo-home")}  # nothing lands in ROOT/.lepton
    for b in blocks_of(page):
        if b.kind == "demo":
            r, env, cwd = run_block(b, env, cwd, demo_home.scratch)
        elif b.kind == "repo":
            r, _, _ = run_block(b, repo_env, ROOT, tmp_path / "blocks")
        else:
            continue
        check_ran(b, r)


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in all_blocks() if b.kind == "output" and b.args], ids=lambda b: b.where)
def test_sample_output_has_the_shape_of_the_real_one(block, demo_home):
    actual = demo_home.outputs[" ".join(block.args)]
    problems = shape_problems(block.text, actual)
    assert not problems, f"{block.where}:\n" + "\n".join(problems) + f"\n--- real output\n{actual[-3000:]}"
