"""Drives Helix in tmux (started by tests/editors/helix.sh) as a user would: types into a
Python file, opens the completion menu with Ctrl-x, checks that the screen lists the item
Ghostline answered with (read from Helix's own LSP log, `hx -v`), selects and accepts it,
saves, and checks that the file holds exactly the server's text after what was typed, and that
Helix sent no command on accept (it does not run an item's command: see the FIXME below).

Nothing here knows what the model will write: the expected text is the server's answer.
"""

import argparse
import json
import re
import subprocess
import sys
import time

TYPED = "return math."
STARTED = time.monotonic()


def log(message):
    print(f"[{time.monotonic() - STARTED:5.1f} s] {message}", flush=True)


# The screen to print when a step fails (set once tmux runs).
SCREEN = None


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    if SCREEN is not None:
        try:
            print("--- Helix screen ---\n" + SCREEN().rstrip(), file=sys.stderr)
        except subprocess.CalledProcessError:
            pass
    sys.exit(1)


class Tmux:
    def __init__(self, socket):
        self.socket = socket

    def run(self, *args):
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def keys(self, *keys):
        self.run("send-keys", "-t", "helix", *keys)

    def literal(self, text):
        self.run("send-keys", "-t", "helix", "-l", text)

    def screen(self):
        return self.run("capture-pane", "-p", "-t", "helix")

    def pane_pid(self):
        return int(self.run("list-panes", "-t", "helix", "-F", "#{pane_pid}").strip())


def wait_for(description, timeout_s, probe, interval_s=0.1):
    deadline = time.monotonic() + timeout_s
    res = None
    while time.monotonic() < deadline:
        res = probe()
        if res:
            return res
        time.sleep(interval_s)
    fail(f"timed out after {timeout_s} s waiting for {description}")


def ghostline_messages(log_path):
    """The JSON-RPC messages between Helix and Ghostline, in order, from Helix's log: each as
    (direction, message) with direction '->' (to the server) or '<-' (from it)."""
    res = []
    try:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            for line in log:
                match = re.search(r"helix_lsp::transport \[INFO\] ghostline (->|<-) (\{.*\})\s*$", line)
                if not match:
                    continue
                try:
                    message = json.loads(match.group(2))
                except json.JSONDecodeError:
                    continue
                if "jsonrpc" in message:
                    res.append((match.group(1), message))
    except FileNotFoundError:
        pass
    return res


def model_state(log_path):
    for direction, message in ghostline_messages(log_path):
        if direction == "<-" and message.get("method") == "$/progress":
            value = message["params"]["value"]
            if value.get("kind") == "end":
                return value.get("message", "")
    return None


def completion_answers(log_path):
    """Ghostline's answers to textDocument/completion, oldest first."""
    messages = ghostline_messages(log_path)
    request_ids = {message["id"] for direction, message in messages
                   if direction == "->" and message.get("method") == "textDocument/completion"}
    return [message for direction, message in messages
            if direction == "<-" and message.get("id") in request_ids and "result" in message]


def items_of(answer):
    result = answer.get("result") or {}
    return result.get("items", []) if isinstance(result, dict) else result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tmux-socket", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--load-timeout", type=float, default=120)
    parser.add_argument("--suggestion-timeout", type=float, default=60)
    args = parser.parse_args()
    log_path = f"{args.work}/helix.log"
    tmux = Tmux(args.tmux_socket)
    global SCREEN
    SCREEN = tmux.screen
    with open(args.file, encoding="utf-8") as file:
        original = file.read()

    wait_for("Helix to show the file", 20, lambda: "circle_area" in tmux.screen())
    server_pids = wait_for("Helix to start the server", 20,
                           lambda: subprocess.run(["pgrep", "-P", str(tmux.pane_pid())], capture_output=True, text=True).stdout.split())
    with open(f"{args.work}/server.pids", "w", encoding="utf-8") as pids:
        pids.write(" ".join(server_pids) + "\n")
    state = wait_for("the model to load", args.load_timeout, lambda: model_state(log_path))
    if "ready" not in state:
        fail(f"the model did not load: {state}")
    log(f"server: {state}")

    # Type a function body on a new last line, then open the completion menu.
    tmux.keys("g", "e")
    tmux.keys("o")
    for ch in TYPED:
        tmux.literal(ch)
        time.sleep(0.04)
    wait_for("the typed text on screen", 10, lambda: TYPED in tmux.screen())
    answers_before = len(completion_answers(log_path))
    tmux.keys("C-x")

    def answered_item():
        answers = completion_answers(log_path)[answers_before:]
        with_items = [answer for answer in answers if items_of(answer)]
        if with_items:
            return items_of(with_items[-1])[0]
        if answers:
            # Empty (the suggestion was not ready in time): ask again, as a user would. `A`
            # (insert at the line's end), not `a`: after `o` and Escape the cursor rests on the
            # newline, and `a` would append on the next line.
            log("an empty answer: asking again")
            tmux.keys("Escape")
            wait_for("normal mode", 10, lambda: re.search(r"^\s*NOR\s", tmux.screen(), re.M))
            tmux.keys("A")
            wait_for("insert mode", 10, lambda: re.search(r"^\s*INS\s", tmux.screen(), re.M))
            tmux.keys("C-x")
        return None

    item = wait_for("a completion answer from Ghostline with an item", args.suggestion_timeout, answered_item, 0.5)
    new_text = item["textEdit"]["newText"]
    label = item["label"]
    log(f"Ghostline item: label {label!r}, text {new_text!r}")
    if not new_text.strip():
        fail(f"the item inserts nothing: {item}")
    if item.get("detail") != "Ghostline":
        fail(f"the item is not Ghostline's: {item}")

    # The menu lists the item (Helix shows the label, cut to the menu's width).
    shown_label = label.strip()[:30]
    menu = wait_for(f"the completion menu to list {shown_label!r}", 10,
                    lambda: (lambda screen: screen if shown_label in screen.split(TYPED, 1)[-1] else None)(tmux.screen()))
    log("menu:\n" + "\n".join(line for line in menu.splitlines() if line.strip() and "~" != line.strip()))

    # Tab selects the item (its documentation names Ghostline), Enter accepts it.
    # Each key waits for the screen to show the one before it took effect: keys sent together
    # can reach Helix in one read, and an Escape read with the ':' after it is Alt-:.
    tmux.keys("Tab")
    wait_for("the selected item's documentation", 10, lambda: "Ghostline" in tmux.screen())
    tmux.keys("Enter")
    first_line = new_text.split("\n", 1)[0]
    accepted_start = TYPED + first_line[:20] if first_line else new_text.strip().split("\n", 1)[0][:20]
    wait_for("the accepted text on screen", 10, lambda: accepted_start in tmux.screen())
    tmux.keys("Escape")
    wait_for("normal mode", 10, lambda: re.search(r"^\s*NOR\s", tmux.screen(), re.M))
    tmux.literal(":w")
    wait_for("the :w prompt", 10, lambda: re.search(r"^:w\s*$", tmux.screen(), re.M))
    tmux.keys("Enter")

    def saved():
        try:
            with open(args.file, encoding="utf-8") as file:
                text = file.read()
        except FileNotFoundError:
            return None  # Helix writes a temporary file and renames it over the old one
        return text if text != original else None

    text = wait_for("Helix to save the file", 10, saved)
    expected = re.compile(re.escape(original) + r"[ \t]*" + re.escape(TYPED + new_text) + r"\n?")
    if not expected.fullmatch(text):
        fail(f"the file does not hold the typed text followed by the item's text {new_text!r}:\n{text}")
    log("accepted: " + text[len(original):].rstrip("\n"))

    # FIXME: Helix 25.01 never runs a completion item's `command` (helix-term/src/ui/completion.rs
    # applies the item's edits on accept and nothing else; helix-editor/helix#15585), so the
    # server is not told of the acceptance (`ghostline.accept`) and cannot count it. This checks
    # today's behaviour: up to the didSave that follows the accept, Helix sent Ghostline no
    # workspace/executeCommand. A Helix that runs the command fails here; then check instead
    # that it sent ghostline.accept with the item's arguments.
    def sent_after_accept():
        methods = [message.get("method") for direction, message in ghostline_messages(log_path) if direction == "->"]
        return methods if "textDocument/didSave" in methods else None

    methods = wait_for("Helix to send didSave to Ghostline", 10, sent_after_accept)
    if "workspace/executeCommand" in methods[: methods.index("textDocument/didSave")]:
        fail("Helix ran a command on accept: check that it is ghostline.accept with the item's arguments and update this test")
    log("accept: Helix ran no command (it does not run a completion item's command)")

    tmux.keys(":q!")
    tmux.keys("Enter")
    log("PASS")


if __name__ == "__main__":
    main()
