"""Keypress-to-paint measurement for Helix (a benchmark, not a test: it asserts nothing about the
times). tests/editors/helix.sh runs it instead of helix_driver.py when GHOSTLINE_PAINT_OUT names
a file.

Helix has no ghost text: what a user sees of Ghostline is its item in the completion menu, and
Helix opens that menu by itself only after two word characters in a row and 250 ms without a key
(`completion-trigger-len`, `completion-timeout`; Ghostline has no trigger characters), asks all
completion servers then, and shows the menu once all have answered. While the menu is open,
further keys only filter it (no new request) until nothing matches. So this measures what a
user typing sees, with Helix's own trigger and no Ctrl-x: per key, the time from `tmux
send-keys` of the key to the first screen (`tmux capture-pane`, polled every POLL_S) whose
completion menu lists a Ghostline item that continues what is typed (the item's edit, applied
to the line as it is after the key, keeps that line as its start). The items and their edits
come from Helix's own LSP log (`hx -v`), and so does the line after each key (Helix's didOpen
and didChange to Ghostline). The resolution is the polling interval, reported as the mean time
between two screens.

Per key: `first` as above; `final` the last change of the listed item once it has stayed
listed and unchanged for STABLE_S; `never` no such item within CAP_S. `not_asked` counts the
never keys after which Helix did not ask Ghostline at all (its trigger did not fire). A key is
a flicker when the item listed as it was pressed continued with it (and held more), yet a screen
before the next key listed none. After each key the driver waits for `final` (or the cap), then
PAUSE_S, then sends the next one.

Appends one JSON line to the file named by --out and prints the keys one by one.
"""

import argparse
import json
import math
import re
import subprocess
import time

from helix_driver import Tmux, fail, items_of, model_state, wait_for

CAP_S = 3.0
STABLE_S = 1.0
PAUSE_S = 0.1
POLL_S = 0.02
# An item still changing this long after its key is not waited for any longer.
SETTLE_LIMIT_S = 15.0


class HelixLog:
    """Helix's LSP log, read as it grows: Ghostline's completion items with their edits, the
    number of completion requests Helix sent it, and the document as Helix sent it (didOpen,
    then incremental didChange)."""

    def __init__(self, path, uri):
        self.path = path
        self.uri = uri
        self.offset = 0
        self.partial = ""
        self.requests = 0
        self.items = []
        self.lines = None
        self.request_ids = set()

    def read(self):
        try:
            with open(self.path, encoding="utf-8", errors="replace") as log:
                log.seek(self.offset)
                text = log.read()
                self.offset = log.tell()
        except FileNotFoundError:
            return
        text = self.partial + text
        *complete, self.partial = text.split("\n")
        for line in complete:
            match = re.search(r"helix_lsp::transport \[INFO\] ghostline (->|<-) (\{.*\})\s*$", line)
            if match:
                try:
                    self.take(match.group(1), json.loads(match.group(2)))
                except json.JSONDecodeError:
                    pass

    def take(self, direction, message):
        method = message.get("method")
        params = message.get("params") or {}
        if direction == "->" and method == "textDocument/completion":
            self.requests += 1
            self.request_ids.add(message.get("id"))
        elif direction == "<-" and message.get("id") in self.request_ids and "result" in message:
            self.items.extend(item for item in items_of(message) if item.get("detail") == "Ghostline")
        elif direction == "->" and method == "textDocument/didOpen" and params["textDocument"]["uri"] == self.uri:
            self.lines = params["textDocument"]["text"].split("\n")
        elif direction == "->" and method == "textDocument/didChange" and params["textDocument"]["uri"] == self.uri:
            for change in params["contentChanges"]:
                self.apply(change)

    def apply(self, change):
        if "range" not in change:
            self.lines = change["text"].split("\n")
            return
        start, end = change["range"]["start"], change["range"]["end"]
        head = self.lines[start["line"]][: start["character"]]
        tail = self.lines[end["line"]][end["character"]:]
        self.lines[start["line"]: end["line"] + 1] = (head + change["text"] + tail).split("\n")


def continues(item, row, head):
    """Whether an item's edit, applied at the cursor of 0-based `row` with `head` before it,
    keeps `head` as its start and adds to it."""
    start = item["textEdit"]["range"]["start"]
    result = head[: start["character"]] + item["textEdit"]["newText"]
    return start["line"] == row and result.startswith(head) and len(result) > len(head)


def listed_item(screen, items, row, head):
    """The label of a Ghostline item the menu on this screen lists that continues `head` (the
    text before the cursor on 0-based `row`), or ''. A menu row holds the label (cut to the
    menu's width) and then the kind, `text` for Ghostline's items."""
    for item in reversed(items):
        if not continues(item, row, head):
            continue
        shown = item["label"].strip()[:30]
        if any(re.search(re.escape(shown) + r".*\stext\b", screen_row) for screen_row in screen.splitlines()):
            return item["label"]
    return ""


def percentile(values, p):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def rounded(value):
    return None if value is None else round(value, 1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tmux-socket", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--line-above", required=True)
    parser.add_argument("--typed", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--load-timeout", type=float, default=120)
    args = parser.parse_args()
    tmux = Tmux(args.tmux_socket)
    helix_log = HelixLog(f"{args.work}/helix.log", "file://" + args.file)

    wait_for("Helix to show the file", 20, lambda: "perimeter" in tmux.screen())
    server_pids = wait_for("Helix to start the server", 20,
                           lambda: subprocess.run(["pgrep", "-P", str(tmux.pane_pid())], capture_output=True, text=True).stdout.split())
    with open(f"{args.work}/server.pids", "w", encoding="utf-8") as pids:
        pids.write(" ".join(server_pids) + "\n")
    state = wait_for("the model to load", args.load_timeout, lambda: model_state(f"{args.work}/helix.log"))
    if "ready" not in state:
        fail(f"the model did not load: {state}")
    helix_log.read()
    if helix_log.lines is None or args.line_above not in helix_log.lines:
        fail(f"Helix did not open {args.file} with the line {args.line_above!r}")
    above = helix_log.lines.index(args.line_above) + 1  # 1-based: Helix's `:goto`
    tmux.literal(f":goto {above}")
    tmux.keys("Enter")
    wait_for(f"the cursor on line {above}", 10, lambda: re.search(rf"\s{above}:\d+\s*$", tmux.screen(), re.M))
    print(f"{state}; typing {args.typed!r} below line {above}", flush=True)

    keys = ["o", *args.typed]
    row = above  # 0-based row of the new line
    indent = None
    listed = ""  # the label listed on the latest screen, '' for none
    intervals = []  # between two screens of one key's polling: the resolution
    results = []
    for idx, key in enumerate(keys, start=1):
        before = listed
        before_head = indent + args.typed[: idx - 2] if idx > 1 and indent is not None else None
        requests_before = helix_log.requests
        pressed = time.monotonic()
        if idx == 1:
            tmux.keys(key)
        else:
            tmux.literal(key)
        result = {"key": key}
        last_change_at = None
        changes = []  # (time, label) of each change of what is listed after the key
        previous_screen_at = None
        while True:
            screen = tmux.screen()
            now = time.monotonic()
            if previous_screen_at is not None:
                intervals.append(now - previous_screen_at)
            previous_screen_at = now
            helix_log.read()
            if idx == 1 and indent is None and len(helix_log.lines) > row and helix_log.lines[row].strip() == "" and helix_log.lines[row - 1] == args.line_above:
                indent = helix_log.lines[row]
            # The key is processed once Helix sent the line (auto-pairs may have added a closing
            # bracket after the cursor) and the status line shows the cursor after it.
            head = None if indent is None else indent + args.typed[: idx - 1]
            processed = head is not None and helix_log.lines[row].startswith(head) \
                and re.search(rf"\s{row + 1}:{len(head) + 1}\s*$", screen, re.M)
            if processed:
                # Until then a screen says nothing about this key.
                label = listed_item(screen, helix_log.items, row, head)
                if label != listed:
                    changes.append((now, label))
                if label != listed or last_change_at is None:
                    listed = label
                    last_change_at = now
                if label and "first_ms" not in result:
                    result["first_ms"] = (now - pressed) * 1000
            if "first_ms" in result and listed and now - last_change_at >= STABLE_S:
                result["final_ms"] = (last_change_at - pressed) * 1000
                result["label"] = listed
                break
            if "first_ms" not in result and now - pressed >= CAP_S:
                result["never"] = True
                break
            if now - pressed >= SETTLE_LIMIT_S:
                result["unsettled"] = True
                break
            time.sleep(POLL_S)
        time.sleep(PAUSE_S)
        helix_log.read()
        result["asked"] = helix_log.requests > requests_before
        # Flicker: the item listed as the key was pressed continued with the key and held more,
        # yet a screen after it listed none.
        if before and before_head is not None:
            agreed = any(item["label"] == before and continues(item, row, before_head + key) for item in helix_log.items)
            result["flicker"] = agreed and any(label == "" for _, label in changes)
        results.append(result)
        first = f"{result['first_ms']:8.1f}" if "first_ms" in result else "   never"
        final = f"{result['final_ms']:8.1f}" if "final_ms" in result else "       -"
        notes = ("  FLICKER" if result.get("flicker") else "") + ("" if result["asked"] else "  (not asked)") \
            + ("  (still changing)" if result.get("unsettled") else "")
        print(f"key {idx:2d} {key!r:5} first {first} ms  final {final} ms{notes}  {result.get('label', '')!r}", flush=True)

    firsts = [result["first_ms"] for result in results if "first_ms" in result]
    finals = [result["final_ms"] for result in results if "final_ms" in result]
    line = json.dumps({
        "editor": "helix",
        "mode": "completion menu on Helix's own trigger (Helix 25.01)",
        "model": args.model,
        "keys": len(keys),
        "first_p50_ms": rounded(percentile(firsts, 50)),
        "first_p90_ms": rounded(percentile(firsts, 90)),
        "first_max_ms": rounded(percentile(firsts, 100)),
        "final_p50_ms": rounded(percentile(finals, 50)),
        "final_p90_ms": rounded(percentile(finals, 90)),
        "never": sum(1 for result in results if result.get("never")),
        "flicker": sum(1 for result in results if result.get("flicker")),
        "not_asked": sum(1 for result in results if result.get("never") and not result["asked"]),
        "resolution_ms": rounded(sum(intervals) / len(intervals) * 1000) if intervals else None,
    })
    with open(args.out, "a", encoding="utf-8") as out:
        out.write(line + "\n")
    print(line, flush=True)
    tmux.keys("Escape")
    tmux.literal(":q!")
    tmux.keys("Enter")


if __name__ == "__main__":
    main()
