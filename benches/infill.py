#!/usr/bin/env python3
"""Execution-based infilling: Ghostline against llama.cpp's `llama-server` on the same model, the
same tasks, the same run, judged by the tests of real packages (in the spirit of HumanEval's
single-line infilling and llm-ls's testbed).

Pure-Python packages are taken from PyPI as pinned sdists whose tests run in seconds; they are
downloaded, unpacked and given a venv with pytest and coverage under the cache
(`~/.cache/ghostline/infill/`, or `$GHOSTLINE_CACHE_DIR/infill/`), never into the repository.
A task blanks, inside a function that the module's test file covers, either one line (kind
`line`) or the 2-4 line body of an `if`/`for`/`while` (kind `block`): the text is replaced by one
line holding only the indentation, as an editor's auto-indent leaves it. Tasks are drawn with a
seed; one is kept only when the module's tests pass on the original file, putting the original
text back through the same splice gives the original file, and the blanked file fails the
tests. So every kept task can fail, and can pass.

Each server is asked once per task at the end of the indentation, as an editor would:
Ghostline over stdio LSP (`didOpen` of the blanked file, `textDocument/inlineCompletion`, with
`maxWaitMs` 60000 so the answer is the finished suggestion), the peer through `/infill` with the
body llama.vim sends (`benches/replay/peer.rs`: 64 lines before, 16 after, n_predict 32,
cache_prompt) and llama.vim's rendering of the answer. The suggestion's first line (`line`
tasks) or the whole suggestion (`block` tasks) is put in, the module's test file is run
(`pytest -x`, with a timeout), and pass/fail, the time to the answer and whether it was empty
are recorded. Servers take turns task by task, the first of them alternating, so machine noise
hits both. Results: a table on stdout and `target/infill/infill.json` (`infill-quick.json` for
--quick).

This file must never change the packages' pristine copies: tests run in a working copy whose
module file is restored after every run.

Usage: python3 benches/infill.py [--tasks N] [--seed S] [--model NAME|PATH] [--threads N]
       [--no-peer] [--quick] [--binary PATH] [--out DIR] [--settings JSON] [--trace]
(defaults: 200 tasks, seed 1, qwen2.5-coder-0.5b, physical cores, target/release/ghostline,
target/infill; --quick: 2 tasks on smollm2-135m, no peer: a check of the harness end to end.)
The peer is `llama-server` in $GHOSTLINE_PEER_BIN or the cache's `peer/build/bin`, built by
benches/build-peer.sh.
"""
import argparse
import ast
import hashlib
import http.client
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lsp_stdio import read_message, write_message

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Package:
    """A pinned PyPI sdist and the modules of it that tasks come from, each with its test file."""

    name: str
    version: str
    # module path -> test file path, both relative to the unpacked sdist.
    modules: dict


# Chosen for pure-Python code, tests inside the sdist that import nothing outside the standard
# library and pytest, and test files that run in about a second each.
PACKAGES = [
    Package("more-itertools", "10.5.0", {
        "more_itertools/more.py": "tests/test_more.py",
        "more_itertools/recipes.py": "tests/test_recipes.py",
    }),
    Package("toolz", "1.0.0", {
        "toolz/itertoolz.py": "toolz/tests/test_itertoolz.py",
        "toolz/functoolz.py": "toolz/tests/test_functoolz.py",
        "toolz/dicttoolz.py": "toolz/tests/test_dicttoolz.py",
    }),
    Package("boltons", "24.1.0", {
        "boltons/iterutils.py": "tests/test_iterutils.py",
        "boltons/strutils.py": "tests/test_strutils.py",
        "boltons/dictutils.py": "tests/test_dictutils.py",
        "boltons/setutils.py": "tests/test_setutils.py",
        "boltons/listutils.py": "tests/test_listutils.py",
        "boltons/urlutils.py": "tests/test_urlutils.py",
        "boltons/cacheutils.py": "tests/test_cacheutils.py",
        "boltons/mathutils.py": "tests/test_mathutils.py",
        "boltons/formatutils.py": "tests/test_formatutils.py",
        "boltons/queueutils.py": "tests/test_queueutils.py",
    }),
]
TOOLS = ["pytest==8.3.3", "coverage==7.6.4"]
KINDS = ["line", "block"]
PEER_NAME = "llama-server"


def log(message):
    print(message, file=sys.stderr, flush=True)


def cache_dir():
    base = os.environ.get("GHOSTLINE_CACHE_DIR")
    base = Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ghostline"
    return base / "infill"


# ---------------------------------------------------------------------------------------------
# The packages: download, unpack, venv, test runs.


class Workspace:
    """The cached sdists, their pristine unpacked trees, a working copy per package (where the
    test runs happen) and the venv that runs the tests."""

    def __init__(self, root):
        self.root = root
        self.python = root / "venv" / "bin" / "python"
        self.coverage_dir = root / "coverage"

    def prepare(self, packages):
        self.root.mkdir(parents=True, exist_ok=True)
        self._venv()
        for package in packages:
            pristine = self.pristine(package)
            if not (pristine / ".ghostline-unpacked").exists():
                self._unpack(package)
            for module, test in package.modules.items():
                for path in (module, test):
                    if not (pristine / path).is_file():
                        raise SystemExit(f"{package.name} {package.version}: {path} is missing from the sdist")
            work = self.work(package)
            if work.exists():
                shutil.rmtree(work)
            shutil.copytree(pristine, work)

    def _venv(self):
        marker = self.root / "venv" / ".ghostline-tools"
        if marker.exists() and marker.read_text() == " ".join(TOOLS):
            return
        log(f"creating the test venv in {self.root / 'venv'} with {' '.join(TOOLS)}")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(self.root / "venv")], check=True)
        subprocess.run([str(self.python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *TOOLS], check=True)
        marker.write_text(" ".join(TOOLS))

    def _unpack(self, package):
        sdists = self.root / "sdist"
        sdists.mkdir(exist_ok=True)
        found = [path for path in sdists.glob("*.tar.gz") if _sdist_matches(path.name, package)]
        if not found:
            log(f"downloading {package.name}=={package.version} (sdist)")
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                            "--no-binary", ":all:", "-d", str(sdists), f"{package.name}=={package.version}"], check=True)
            found = [path for path in sdists.glob("*.tar.gz") if _sdist_matches(path.name, package)]
        if not found:
            raise SystemExit(f"pip downloaded no sdist for {package.name}=={package.version}")
        pristine = self.pristine(package)
        if pristine.exists():
            shutil.rmtree(pristine)
        staging = self.root / "src" / f".staging-{package.name}"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        with tarfile.open(found[0]) as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(staging, filter="data")
            else:
                archive.extractall(staging)
        (top,) = list(staging.iterdir())
        top.rename(pristine)
        staging.rmdir()
        (pristine / ".ghostline-unpacked").write_text(found[0].name)

    def pristine(self, package):
        return self.root / "src" / f"{package.name}-{package.version}"

    def work(self, package):
        return self.root / "work" / f"{package.name}-{package.version}"


def _sdist_matches(file_name, package):
    normalized = file_name.lower().replace("_", "-")
    return normalized == f"{package.name.lower()}-{package.version}.tar.gz"


def _limit_child():
    # A suggestion can allocate without end; keep one test run from taking the machine.
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


@dataclass
class TestRun:
    passed: bool
    timed_out: bool
    seconds: float
    tail: str


class TestRunner:
    """Runs a module's test file with the module's text replaced, in the package's working copy.
    Results are kept by the text's hash: the same text gives the same result."""

    def __init__(self, workspace):
        self.workspace = workspace
        self.results = {}
        self.baselines = {}
        self.runs = 0
        self.seconds = 0.0

    def _command(self, test):
        return [str(self.workspace.python), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", test]

    def _env(self, work):
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST", "PYTHON", "COV_"))}
        # No bytecode: a module rewritten within the same second at the same size must not be
        # read from a stale .pyc.
        env.update({"PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "PYTHONPATH": str(work)})
        return env

    def _run(self, command, work, timeout):
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=work, env=self._env(work), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_limit_child)
        try:
            output, _ = process.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            timed_out = True
        seconds = time.monotonic() - started
        self.runs += 1
        self.seconds += seconds
        text = output.decode("utf-8", "replace")
        return TestRun(passed=process.returncode == 0 and not timed_out, timed_out=timed_out, seconds=seconds, tail=text[-600:])

    def baseline(self, package, module):
        """The original module's run; None when its tests do not pass (the module is not used)."""
        key = (package.name, module)
        if key not in self.baselines:
            work = self.workspace.work(package)
            run = self._run(self._command(package.modules[module]), work, timeout=300)
            self.baselines[key] = run if run.passed else None
            text = (self.workspace.pristine(package) / module).read_text()
            if run.passed:
                self.results[(package.name, module, _digest(text))] = run
            else:
                log(f"{package.name} {module}: its tests fail on the original file, not used:\n{run.tail}")
        return self.baselines[key]

    def run(self, package, module, text):
        baseline = self.baseline(package, module)
        if baseline is None:
            raise RuntimeError(f"{package.name} {module} has no passing baseline")
        key = (package.name, module, _digest(text))
        if key in self.results:
            return self.results[key]
        work = self.workspace.work(package)
        pristine_text = (self.workspace.pristine(package) / module).read_text()
        target = work / module
        try:
            target.write_text(text)
            result = self._run(self._command(package.modules[module]), work, timeout=max(20.0, 10 * baseline.seconds))
        finally:
            target.write_text(pristine_text)
        self.results[key] = result
        return result

    def executed_lines(self, package, module):
        """Line numbers (1-based) of the module that its test file executes, by coverage.py,
        kept in the cache (the packages are pinned)."""
        cached = self.workspace.coverage_dir / f"{package.name}-{package.version}" / (module.replace("/", "__") + ".json")
        if cached.exists():
            return set(json.loads(cached.read_text()))
        work = self.workspace.work(package)
        cached.parent.mkdir(parents=True, exist_ok=True)
        data_file = cached.with_suffix(".coverage")
        report = cached.with_suffix(".report.json")
        module_path = str(work / module)
        env = self._env(work)
        run = [str(self.workspace.python), "-m", "coverage", "run", f"--data-file={data_file}", f"--include={module_path}",
               "-m", "pytest", "-q", "-p", "no:cacheprovider", package.modules[module]]
        subprocess.run(run, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        subprocess.run([str(self.workspace.python), "-m", "coverage", "json", f"--data-file={data_file}", "-o", str(report),
                        f"--include={module_path}"], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        files = json.loads(report.read_text())["files"]
        lines = sorted({line for info in files.values() for line in info["executed_lines"]})
        if not lines:
            raise SystemExit(f"coverage saw no executed line of {package.name} {module}")
        cached.write_text(json.dumps(lines))
        data_file.unlink(missing_ok=True)
        report.unlink(missing_ok=True)
        return set(lines)


def _digest(text):
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Tasks.


@dataclass
class Task:
    package: Package
    module: str
    kind: str
    # First and last line of the blanked text (0-based, inclusive).
    start: int
    end: int
    indent: str
    lines: list = field(repr=False)

    def label(self):
        span = f"{self.start + 1}" if self.start == self.end else f"{self.start + 1}-{self.end + 1}"
        return f"{self.package.name}:{self.module}:{span}"

    def original(self):
        """What the blanked text held after the indentation."""
        return "\n".join(self.lines[self.start:self.end + 1])[len(self.indent):]

    def with_text(self, inserted):
        """The module with the blanked text replaced by the indentation and `inserted`."""
        return "\n".join(self.lines[:self.start] + [self.indent + inserted] + self.lines[self.end + 1:])

    def blanked_lines(self):
        return self.lines[:self.start] + [self.indent] + self.lines[self.end + 1:]

    def next_nonblank_line(self):
        return next((line for line in self.lines[self.end + 1:] if line.strip()), None)


COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.FunctionDef,
            ast.AsyncFunctionDef, ast.ClassDef) + ((ast.Match,) if hasattr(ast, "Match") else ()) + \
           ((ast.TryStar,) if hasattr(ast, "TryStar") else ())


def candidates(package, module, text):
    """All tasks of both kinds in the module's functions, in line order: (kind, task, the line
    that must be covered)."""
    lines = text.split("\n")
    tree = ast.parse(text)
    parents = {}
    statements_on_line = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
        if isinstance(node, ast.stmt):
            statements_on_line[node.lineno] = statements_on_line.get(node.lineno, 0) + 1

    def in_function(node):
        scope = parents.get(node)
        while scope is not None and not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            scope = parents.get(scope)
        return isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef))

    def rest_is_comment(line, byte_column):
        rest = line.encode()[byte_column:].decode("utf-8", "replace").strip()
        return not rest or rest.startswith("#")

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt) or not in_function(node):
            continue
        if not isinstance(node, COMPOUND):
            if node.lineno != node.end_lineno or statements_on_line[node.lineno] != 1 or isinstance(node, ast.Pass):
                continue
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                continue  # a docstring
            line = lines[node.lineno - 1]
            indent = line[:node.col_offset]
            if indent.strip() or not rest_is_comment(line, node.end_col_offset):
                continue
            task = Task(package, module, "line", node.lineno - 1, node.lineno - 1, indent, lines)
            found.append(task)
        elif isinstance(node, (ast.If, ast.For, ast.While)):
            body = node.body
            first, last = body[0].lineno, body[-1].end_lineno
            if first <= node.lineno or not 2 <= last - first + 1 <= 4:
                continue
            header_end = max(getattr(node, name).end_lineno for name in ("test", "iter") if hasattr(node, name))
            indent = lines[first - 1][:body[0].col_offset]
            if first <= header_end or indent.strip() or not rest_is_comment(lines[last - 1], body[-1].end_col_offset):
                continue
            found.append(Task(package, module, "block", first - 1, last - 1, indent, lines))
    found.sort(key=lambda task: (task.start, task.end, task.kind))
    return found


def select_tasks(workspace, runner, packages, count, seed):
    """`count` tasks, kinds alternating and packages in turn; each list of candidates is shuffled
    with the seed and walked until a candidate is covered, splices back to the original file
    and fails the tests when blanked."""
    pools = {}
    for package in packages:
        every = []
        for module in package.modules:
            text = (workspace.pristine(package) / module).read_text()
            every.extend(candidates(package, module, text))
        for kind in KINDS:
            pool = [task for task in every if task.kind == kind]
            random.Random(f"{seed}:{package.name}:{kind}").shuffle(pool)
            pools[(package.name, kind)] = pool
    tasks, tried, rejected = [], 0, {"not covered": 0, "blanked still passes": 0}
    slot = 0
    exhausted = set()
    while len(tasks) < count and len(exhausted) < len(packages) * len(KINDS):
        package = packages[slot % len(packages)]
        kind = KINDS[slot % len(KINDS)]
        slot += 1
        pool = pools[(package.name, kind)]
        while pool:
            task = pool.pop(0)
            if runner.baseline(package, task.module) is None:
                continue
            tried += 1
            covered = runner.executed_lines(package, task.module)
            if task.start + 1 not in covered:
                rejected["not covered"] += 1
                continue
            original_text = (workspace.pristine(package) / task.module).read_text()
            if task.with_text(task.original()) != original_text:
                raise SystemExit(f"{task.label()}: putting the original text back does not give the original file")
            if runner.run(package, task.module, "\n".join(task.blanked_lines())).passed:
                rejected["blanked still passes"] += 1
                continue
            tasks.append(task)
            break
        else:
            exhausted.add((package.name, kind))
    return tasks, {"candidates_tried": tried, "rejected": rejected}


# ---------------------------------------------------------------------------------------------
# The servers.


def process_cpu_seconds(pid):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class Ghostline:
    """Ghostline over stdio LSP, as an editor without the ready notification: the request waits
    (up to `maxWaitMs`) for the finished suggestion."""

    name = "ghostline"

    def __init__(self, binary, model_path, threads, extra_settings, stderr_path):
        self.stderr = open(stderr_path, "wb")
        self.process = subprocess.Popen([binary, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        self.lock = threading.Condition()
        self.answers = {}
        self.next_id = 0
        threading.Thread(target=self._reader, daemon=True).start()
        settings = {"model": str(model_path), "maxWaitMs": 60000, "threads": threads, **extra_settings}
        self.request("initialize", {"processId": os.getpid(), "rootUri": None, "initializationOptions": settings,
                                    "capabilities": {"general": {"positionEncodings": ["utf-16"]}}})
        self.notify("initialized", {})
        deadline = time.monotonic() + 300
        while True:
            engine = self.request("ghostline/stats", None)["result"]["engine"]
            if engine["state"] == "ready":
                break
            if engine["state"] == "failed" or time.monotonic() > deadline:
                raise SystemExit(f"Ghostline's engine did not start: {engine}")
            time.sleep(0.05)
        self.cpu_at_start = process_cpu_seconds(self.process.pid)

    def _send(self, message):
        write_message(self.process.stdin, message)

    def _reader(self):
        while True:
            message = read_message(self.process.stdout)
            if message is None:
                with self.lock:
                    self.lock.notify_all()
                return
            if "id" in message and "method" not in message:
                with self.lock:
                    self.answers[message["id"]] = message
                    self.lock.notify_all()
            elif "id" in message:  # a request from the server: answer it
                self._send({"jsonrpc": "2.0", "id": message["id"], "result": None})

    def notify(self, method, params):
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method, params, timeout=300):
        self.next_id += 1
        request_id = self.next_id
        self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        with self.lock:
            if not self.lock.wait_for(lambda: request_id in self.answers or self.process.poll() is not None, timeout=timeout):
                raise SystemExit(f"Ghostline did not answer {method} within {timeout} s")
            if request_id not in self.answers:
                raise SystemExit(f"Ghostline exited ({self.process.poll()}) before answering {method}")
            answer = self.answers.pop(request_id)
        if "error" in answer:
            raise SystemExit(f"Ghostline answered {method} with an error: {answer['error']}")
        return answer

    def wait_idle(self):
        """Until every job the server started has ended, idle-time work included, seen twice in a
        row (idle-time work starts just after a job ends)."""
        in_a_row, deadline = 0, time.monotonic() + 120
        while in_a_row < 2:
            stats = self.request("ghostline/stats", None)["result"]
            counters = stats["counters"]
            idle = counters["jobsEnded"] >= counters["jobsStarted"] + counters["prefetchJobs"] and stats["idleWork"] == 0
            in_a_row = in_a_row + 1 if idle else 0
            if time.monotonic() > deadline:
                raise SystemExit(f"Ghostline is still busy after 120 s: {stats}")
            time.sleep(0.02)

    def complete(self, task, uri):
        """The suggestion at the blanked line (text after the cursor) or None, and the seconds
        from opening the file to the answer."""
        text = "\n".join(task.blanked_lines())
        started = time.monotonic()
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}})
        answer = self.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri},
            "position": {"line": task.start, "character": len(task.indent.encode("utf-16-le")) // 2},
            # Asked on purpose (invoked): the whole finished suggestion (an automatic request
            # from a client that waits gets the first line as soon as it is complete).
            "context": {"triggerKind": 1},
        })
        seconds = time.monotonic() - started
        self.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        self.wait_idle()
        items = (answer.get("result") or {}).get("items") or []
        suggestion = items[0].get("insertText") if items else None
        if isinstance(suggestion, dict):  # a snippet string
            suggestion = suggestion.get("value")
        return (suggestion if suggestion and suggestion.strip() else None), seconds

    def cpu_seconds(self):
        return process_cpu_seconds(self.process.pid) - self.cpu_at_start

    def close(self):
        try:
            self.request("shutdown", None, timeout=30)
            self.notify("exit", None)
            self.process.wait(timeout=30)
        except (SystemExit, OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self.stderr.close()


def peer_bin_dir():
    """Where benches/build-peer.sh puts the peer, unless GHOSTLINE_PEER_BIN names a folder."""
    if os.environ.get("GHOSTLINE_PEER_BIN"):
        return Path(os.environ["GHOSTLINE_PEER_BIN"])
    base = os.environ.get("GHOSTLINE_CACHE_DIR")
    base = Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ghostline"
    directory = base / "peer" / "build" / "bin"
    return directory if (directory / "llama-server").exists() else None


def infill_context(lines, line, head, tail):
    """What llama.vim puts around the cursor (peer.rs `infill_context`): 64 lines before, the
    cursor line's head as the prompt, its tail and 16 lines after as the suffix; a line of only
    whitespace is sent as empty."""
    before = lines[max(0, line - 64):line]
    after = lines[min(line + 1, len(lines)):min(line + 17, len(lines))]
    whole = head + tail
    if not whole.strip():
        middle, tail, indent = "", "", 0
    else:
        middle, indent = head, len(whole) - len(whole.lstrip())
    return {"prefix": "\n".join(before) + "\n", "middle": middle, "suffix": f"{tail}\n" + "\n".join(after) + "\n", "indent": indent}


def infill_body(context):
    """The `/infill` body llama.vim sends (peer.rs `infill_body`), without extra chunks."""
    return json.dumps({
        "input_prefix": context["prefix"],
        "input_suffix": context["suffix"],
        "input_extra": [],
        "prompt": context["middle"],
        "n_predict": 32,
        "n_indent": context["indent"],
        "top_k": 40,
        "top_p": 0.90,
        "stream": False,
        "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": True,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 250,
    })


def rendered(content, line_head, next_nonblank_line):
    """What llama.vim shows for an answer (peer.rs `rendered`): trailing empty lines dropped,
    the leading whitespace of a whitespace-only line's answer trimmed, nothing when it only
    repeats the next line."""
    lines = content.split("\n")
    while len(lines) > 1 and lines[-1] == "":
        lines.pop()
    first = lines[0]
    if not line_head.strip():
        lead = min(len(first) - len(first.lstrip()), len(line_head))
        first = first[lead:]
    if len(lines) == 1 and next_nonblank_line is not None and line_head + first == next_nonblank_line:
        return None
    lines[0] = first
    text = "\n".join(lines)
    return text if text.strip() else None


class Peer:
    """llama.cpp's `llama-server` with the settings llama.vim recommends for FIM (peer.rs)."""

    name = PEER_NAME

    def __init__(self, bin_dir, model_path, threads, stderr_path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.stderr = open(stderr_path, "wb")
        self.process = subprocess.Popen(
            [str(bin_dir / "llama-server"), "-m", str(model_path), "--host", "127.0.0.1", "--port", str(self.port), "-t", str(threads),
             "-c", "4096", "-np", "1", "-b", "1024", "-ub", "1024", "--cache-reuse", "256", "--no-webui"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr)
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"llama-server exited while loading ({self.process.returncode}), see {stderr_path}")
            try:
                if self._http("GET", "/health", None, 2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("llama-server did not become healthy within 120 s")
            time.sleep(0.1)
        self.cpu_at_start = process_cpu_seconds(self.process.pid)

    def _http(self, method, path, body, timeout):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json", "Connection": "close"} if body is not None else {"Connection": "close"}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def complete(self, task, uri):
        lines = task.blanked_lines()
        body = infill_body(infill_context(lines, task.start, task.indent, ""))
        started = time.monotonic()
        status, payload = self._http("POST", "/infill", body, 120)
        seconds = time.monotonic() - started
        if status != 200:
            raise SystemExit(f"llama-server's /infill answered {status}: {payload[:500]!r}")
        content = json.loads(payload).get("content") or ""
        return rendered(content, task.indent, task.next_nonblank_line()), seconds

    def cpu_seconds(self):
        return process_cpu_seconds(self.process.pid) - self.cpu_at_start

    def close(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stderr.close()


def inserted_text(task, suggestion):
    """What is put in at the blank: the suggestion's first line for a `line` task, the whole
    suggestion without trailing blank lines for a `block` task; "" for no suggestion."""
    if suggestion is None:
        return ""
    if task.kind == "line":
        return suggestion.split("\n")[0].rstrip()
    lines = suggestion.rstrip().split("\n")
    return "\n".join(line.rstrip() for line in lines)


def warm_up(server):
    """One completion outside the tasks, so that neither server's first task pays for cold
    caches and first allocations."""
    lines = ["def scale(values, factor):", "    result = []", "    for value in values:", "        ", "    return result", ""]
    task = Task(PACKAGES[0], "warm_up.py", "line", 3, 3, "        ", lines)
    server.complete(task, "file:///ghostline-infill/warm_up.py")


# ---------------------------------------------------------------------------------------------
# The report.


def percentile(values, fraction):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarize(records, server):
    summary = {}
    for kind in KINDS:
        mine = [record["answers"][server] for record in records if record["kind"] == kind]
        summary[kind] = {"tasks": len(mine), "passed": sum(answer["passed"] for answer in mine),
                         "exact": sum(answer["exact"] for answer in mine), "empty": sum(answer["empty"] for answer in mine)}
        summary[kind]["pass_at_1"] = summary[kind]["passed"] / len(mine) if mine else None
    answers = [record["answers"][server] for record in records]
    suggestion_ms = [answer["ms"] for answer in answers if not answer["empty"]]
    all_ms = [answer["ms"] for answer in answers]
    summary["empty"] = sum(answer["empty"] for answer in answers)
    summary["passed_by_package"] = {}
    for record in records:
        counts = summary["passed_by_package"].setdefault(record["package"], {"line": [0, 0], "block": [0, 0]})[record["kind"]]
        counts[0] += record["answers"][server]["passed"]
        counts[1] += 1
    summary["time_to_suggestion_ms"] = {"p50": percentile(suggestion_ms, 0.5), "p90": percentile(suggestion_ms, 0.9), "n": len(suggestion_ms)}
    summary["time_to_answer_ms"] = {"p50": percentile(all_ms, 0.5), "p90": percentile(all_ms, 0.9), "n": len(all_ms)}
    return summary


def add_passed_alone(summaries, records, names):
    """Per kind, the tasks that only this server passed: with one run per task, the pairs show
    how much of a difference in pass@1 rests on few tasks."""
    for name in names:
        for kind in KINDS:
            summaries[name][kind]["passed_alone"] = sum(
                record["answers"][name]["passed"] and not any(record["answers"][other]["passed"] for other in names if other != name)
                for record in records if record["kind"] == kind)


def print_table(summaries, names):
    def cell(value, fmt):
        return "-" if value is None else fmt.format(value)

    def ratio(values):
        if len(values) < 2 or values[0] is None or values[1] in (None, 0):
            return "-"
        return f"{values[0] / values[1]:.2f}"

    rows = []
    for kind, label in (("line", "pass@1, single lines"), ("block", "pass@1, blocks")):
        values = [summaries[name][kind]["pass_at_1"] for name in names]
        cells = [f"{summaries[name][kind]['passed']}/{summaries[name][kind]['tasks']} " + cell(summaries[name][kind]["pass_at_1"], "({:.0%})")
                 for name in names]
        rows.append((label, cells, ratio(values)))
    if len(names) > 1:
        for kind, label in (("line", "passed by it alone, lines"), ("block", "passed by it alone, blocks")):
            rows.append((label, [f"{summaries[name][kind]['passed_alone']}" for name in names], ""))
    for kind, label in (("line", "exact, single lines"), ("block", "exact, blocks")):
        rows.append((label, [f"{summaries[name][kind]['exact']}/{summaries[name][kind]['tasks']}" for name in names],
                     ratio([summaries[name][kind]["exact"] for name in names])))
    rows.append(("empty answers", [str(summaries[name]["empty"]) for name in names], ratio([summaries[name]["empty"] for name in names])))
    for key, label in (("p50", "time to suggestion p50 ms"), ("p90", "time to suggestion p90 ms")):
        values = [summaries[name]["time_to_suggestion_ms"][key] for name in names]
        rows.append((label, [cell(value, "{:.0f}") for value in values], ratio(values)))
    rows.append(("server CPU s", [f"{summaries[name]['cpu_seconds']:.1f}" for name in names],
                 ratio([summaries[name]["cpu_seconds"] for name in names])))
    header = ("", names, f"ratio {names[0]}/{names[1]}" if len(names) > 1 else "")
    widths = [max(len(row[0]) for row in rows + [header])] + [max(14, len(name)) for name in names]
    for label, cells, ratio_text in [header] + rows:
        line = label.ljust(widths[0]) + "  " + "  ".join(text.rjust(width) for text, width in zip(cells, widths[1:]))
        if len(names) > 1:
            line += "  " + ratio_text.rjust(len(header[2]))
        print(line)


def machine_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def physical_cores():
    cores = set()
    try:
        physical = core = None
        for line in open("/proc/cpuinfo"):
            if line.startswith("physical id"):
                physical = line.split(":")[1].strip()
            elif line.startswith("core id"):
                core = line.split(":")[1].strip()
            elif not line.strip() and core is not None:
                cores.add((physical, core))
                physical = core = None
    except OSError:
        pass
    return len(cores) or os.cpu_count() or 1


def git_commit():
    """The checkout's commit, with "+changes" when the work tree differs from it (the binary is
    whatever was built last; its time is in the report too)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def model_path(binary, model):
    if Path(model).is_file():
        return Path(model).resolve()
    found = subprocess.run([binary, "models", "path", model], capture_output=True, text=True)
    path = Path(found.stdout.strip()) if found.returncode == 0 else None
    if path is None or not path.is_file():
        raise SystemExit(f"model {model} is not in the cache: run `{binary} models fetch {model}` ({found.stderr.strip()})")
    return path


def parse_options():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, help="tasks, kinds alternating (default 200, about 25 minutes with the peer on 2 cores; --quick: 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", help="registry name or .gguf path (default qwen2.5-coder-0.5b; --quick: smollm2-135m)")
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--quick", action="store_true", help="check the harness end to end: 2 tasks, the tiny model, no peer")
    parser.add_argument("--binary", default=str(REPO / "target" / "release" / "ghostline"))
    parser.add_argument("--out", default=str(REPO / "target" / "infill"))
    parser.add_argument("--settings", default="{}", help="extra Ghostline settings, a JSON object (to measure a variant)")
    parser.add_argument("--trace", action="store_true", help="print each suggestion")
    options = parser.parse_args()
    options.settings = json.loads(options.settings)
    if not isinstance(options.settings, dict):
        raise SystemExit("--settings takes a JSON object")
    if options.tasks is None:
        options.tasks = 2 if options.quick else 200
    if options.model is None:
        options.model = "smollm2-135m" if options.quick else "qwen2.5-coder-0.5b"
    if options.quick:
        options.no_peer = True
    return options


def stop_on_signal(signal_number, _frame):
    # SystemExit unwinds through the `finally` blocks: the servers are shut down and the
    # module under test is restored (a background job started by a shell ignores SIGINT, and
    # SIGTERM's default would leave llama-server running).
    raise SystemExit(128 + signal_number)


def main():
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    options = parse_options()
    run_started = time.monotonic()
    if not Path(options.binary).is_file():
        raise SystemExit(f"{options.binary} is missing: build it with `cargo build --release`")
    model = model_path(options.binary, options.model)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)

    workspace = Workspace(cache_dir())
    workspace.prepare(PACKAGES)
    runner = TestRunner(workspace)
    tasks, selection = select_tasks(workspace, runner, PACKAGES, options.tasks, options.seed)
    if not tasks:
        raise SystemExit("no task survived the checks")
    selection_seconds = time.monotonic() - run_started
    log(f"{len(tasks)} tasks chosen in {selection_seconds:.1f} s ({selection['candidates_tried']} candidates tried, "
        f"rejected: {selection['rejected']}); starting the servers")

    servers = [Ghostline(options.binary, model, options.threads, options.settings, out / "ghostline-stderr.log")]
    if not options.no_peer:
        bin_dir = peer_bin_dir()
        if bin_dir is None:
            raise SystemExit("llama-server not found: run benches/build-peer.sh, set GHOSTLINE_PEER_BIN, or pass --no-peer")
        servers.append(Peer(bin_dir, model, options.threads, out / "peer-stderr.log"))
    names = [server.name for server in servers]
    try:
        for server in servers:
            warm_up(server)
        records = []
        for task_idx, task in enumerate(tasks):
            order = servers if task_idx % 2 == 0 else list(reversed(servers))
            uri = (workspace.work(task.package) / task.module).resolve().as_uri()
            answers = {}
            for server in order:
                suggestion, seconds = server.complete(task, uri)
                inserted = inserted_text(task, suggestion)
                result = runner.run(task.package, task.module, task.with_text(inserted))
                answers[server.name] = {
                    "passed": result.passed, "timed_out": result.timed_out, "empty": suggestion is None,
                    "exact": inserted.strip() == task.original().strip(), "ms": seconds * 1000,
                    "suggestion": suggestion, "inserted": inserted, "test_tail": None if result.passed else result.tail[-300:],
                }
            records.append({"package": f"{task.package.name}=={task.package.version}", "module": task.module, "kind": task.kind,
                             "first_line": task.start + 1, "last_line": task.end + 1, "original": task.original(), "answers": answers})
            verdicts = " | ".join(f"{name} {'pass' if answers[name]['passed'] else 'FAIL'}{' (empty)' if answers[name]['empty'] else ''} "
                                  f"{answers[name]['ms']:.0f} ms" for name in names)
            log(f"[{task_idx + 1}/{len(tasks)}] {task.kind:5} {task.label()}: {verdicts}")
            if options.trace:
                log(f"    original: {task.original()!r}")
                for name in names:
                    log(f"    {name}: {answers[name]['inserted']!r}")
        summaries = {name: summarize(records, name) for name in names}
        add_passed_alone(summaries, records, names)
        for server in servers:
            summaries[server.name]["cpu_seconds"] = server.cpu_seconds()
    finally:
        for server in servers:
            server.close()

    elapsed = time.monotonic() - run_started
    print(f"infill: {len(tasks)} tasks ({sum(t.kind == 'line' for t in tasks)} single lines, {sum(t.kind == 'block' for t in tasks)} blocks) "
          f"from {', '.join(f'{p.name} {p.version}' for p in PACKAGES)}; seed {options.seed}")
    print(f"model {options.model} ({model.name}), threads {options.threads}, machine {machine_name()}")
    print_table(summaries, names)
    print(f"time to suggestion: from didOpen (Ghostline) or the /infill request (peer) to the answer, non-empty answers only; "
          f"{runner.runs} test runs took {runner.seconds:.0f} s; the whole run {elapsed:.0f} s")
    ratios = {}
    if len(names) > 1:
        pick = {"pass_at_1_line": lambda s: s["line"]["pass_at_1"], "pass_at_1_block": lambda s: s["block"]["pass_at_1"],
                "empty": lambda s: s["empty"], "time_to_suggestion_p50": lambda s: s["time_to_suggestion_ms"]["p50"],
                "time_to_suggestion_p90": lambda s: s["time_to_suggestion_ms"]["p90"], "cpu_seconds": lambda s: s["cpu_seconds"]}
        for key, get in pick.items():
            first, second = get(summaries[names[0]]), get(summaries[names[1]])
            ratios[key] = first / second if first is not None and second else None
    report = {
        "bench": "infill", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_name(), "model": options.model,
        "model_file": str(model), "threads": options.threads, "ghostline_settings": options.settings, "commit": git_commit(),
        "binary": options.binary, "binary_built": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(Path(options.binary).stat().st_mtime)), "seed": options.seed, "quick": options.quick,
        "packages": [f"{p.name}=={p.version}" for p in PACKAGES], "servers": names, "selection": selection,
        "summaries": summaries, "ratios": {"of": f"{names[0]}/{names[1]}", **ratios} if ratios else None,
        "test_runs": runner.runs, "test_seconds": runner.seconds, "elapsed_seconds": elapsed, "tasks": records,
    }
    # The quick check writes a file of its own, so that it never replaces a real run's results.
    report_path = out / ("infill-quick.json" if options.quick else "infill.json")
    report_path.write_text(json.dumps(report, indent=1))
    print(f"wrote {report_path}")
    if options.quick:
        # The harness check: every task got an answer record per server, and the report holds them.
        written = json.loads(report_path.read_text())
        assert len(written["tasks"]) == len(tasks) and all(set(task["answers"]) == set(names) for task in written["tasks"])
        print(f"quick check passed in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
