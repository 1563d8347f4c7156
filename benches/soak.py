#!/usr/bin/env python3
"""Soak: KEYS keystrokes typed at full speed into one document of the real binary over stdio,
as an editor that takes ghostline/suggestionReady types: each key is a didChange and an
inlineCompletion request, the next key sent when the answer came. Lines of Python are typed
and, at each line's end, a new line is started; every 10% of the keys the script prints the
server's RSS, its thread count and the response-time percentiles so far. At the end: every
request answered exactly once, the server's copy of the document (`ghostline/document`) against
the script's, the RSS growth after the first 10% of keys, the most threads. It exits with an
error when a request was answered twice, a change was rejected, the server's document differs
from the script's, the thread count passed MAX_THREADS, or (from 20,000 keys on, where the first tenth has warmed the
allocator) the RSS grew by more than 5% after the first tenth.

Usage: python3 benches/soak.py [KEYS] [BINARY] [MODEL]
(defaults: 100000, target/release/ghostline, qwen2.5-coder-0.5b; 2 threads for the engine)
"""
import json, os, subprocess, sys, threading, time

from lsp_stdio import read_message, write_message

keys = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
# The server's threads: the runtime's workers and blocking pool, the engine, the parse and
# planning threads, the engine check's reader; none per keystroke.
MAX_THREADS = 32
binary = sys.argv[2] if len(sys.argv) > 2 else "target/release/ghostline"
model = sys.argv[3] if len(sys.argv) > 3 else "qwen2.5-coder-0.5b"
proc = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
lock = threading.Condition()
answers = {}
answered_twice = []

def send(message):
    write_message(proc.stdin, message)

def reader():
    while True:
        message = read_message(proc.stdout)
        if message is None:
            return
        if "id" in message and "method" not in message:
            with lock:
                if message["id"] in answers:
                    answered_twice.append(message["id"])
                answers[message["id"]] = (time.monotonic(), message)
                lock.notify_all()
        elif "id" in message:  # a request from the server: answer it
            send({"jsonrpc": "2.0", "id": message["id"], "result": None})

threading.Thread(target=reader, daemon=True).start()

def request(request_id, method, params, timeout=600):
    send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
    with lock:
        if not lock.wait_for(lambda: request_id in answers, timeout=timeout):
            raise SystemExit(f"request {request_id} ({method}) never answered")
        return answers[request_id][1]

def status(field):
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith(field):
            return int(line.split()[1])

request("init", "initialize", {"capabilities": {"experimental": {"ghostline": {"suggestionReady": True}}},
                               "initializationOptions": {"model": model, "threads": 2, "suggestionReadyNotification": True}})
send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
while request(f"ready-{time.monotonic()}", "ghostline/stats", {})["result"]["engine"]["state"] != "ready":
    time.sleep(0.1)

uri = "file:///soak/typed.py"
lines = ["def area(radius):", "    return 3.14159 * radius ** 2", "", "def total(values):",
         "    result = 0", "    for value in values:", "        result += value", "    return result", ""]
send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": ""}}})
line, column, version, typed_line = 0, 0, 1, 0
document = [""]  # the editor's copy, line by line
latencies, rss_at, max_threads = [], [], 0
start = time.monotonic()
for key in range(keys):
    target = lines[typed_line % len(lines)]
    if column < len(target):
        text, new_line, new_column = target[column], line, column + 1
    else:
        text, new_line, new_column = "\n", line + 1, 0
        typed_line += 1
    version += 1
    send({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {"textDocument": {"uri": uri, "version": version},
          "contentChanges": [{"range": {"start": {"line": line, "character": column}, "end": {"line": line, "character": column}}, "text": text}]}})
    if text == "\n":
        document[line:line + 1] = [document[line][:column], document[line][column:]]
    else:
        document[line] = document[line][:column] + text + document[line][column:]
    line, column = new_line, new_column
    sent = time.monotonic()
    request(key, "textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": {"line": line, "character": column}, "context": {"triggerKind": 2}})
    latencies.append((answers[key][0] - sent) * 1000)
    if key % 200 == 0:
        max_threads = max(max_threads, status("Threads:"))
    if (key + 1) % max(1, keys // 10) == 0:
        ordered = sorted(latencies)
        pct = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))]
        rss_at.append(status("VmRSS:") / 1024)
        print(json.dumps({"keys": key + 1, "rss_mib": round(rss_at[-1], 1), "threads": status("Threads:"),
                          "response_ms_p50": round(pct(0.5), 2), "p90": round(pct(0.9), 2), "p99": round(pct(0.99), 2),
                          "max": round(ordered[-1], 2), "seconds": round(time.monotonic() - start, 1)}), flush=True)
stats = request("final", "ghostline/stats", {})["result"]
server_copy = request("document", "ghostline/document", {"uri": uri})["result"]
identical = server_copy["text"] == "\n".join(document) and server_copy["version"] == version and not server_copy["diverged"]
growth = (rss_at[-1] - rss_at[0]) / rss_at[0] if rss_at else 0.0
print(json.dumps({"keys": keys, "answered_twice": len(answered_twice), "rss_growth_after_first_tenth": round(growth, 4),
                  "max_threads": max_threads, "jobs": stats["counters"]["jobsStarted"], "typed_ahead_hits": stats["counters"]["typedAheadHits"],
                  "rejected_changes": stats.get("rejectedChanges"), "document_identical": identical,
                  "document_chars": len("\n".join(document))}))
request("shutdown", "shutdown", None)
send({"jsonrpc": "2.0", "method": "exit"})
proc.wait(timeout=30)
failures = []
if answered_twice or stats.get("rejectedChanges"):
    failures.append("some requests were answered twice or changes were rejected")
if not identical:
    failures.append(f"the server's copy of the document (version {server_copy['version']}) differs from the editor's (version {version})")
if max_threads > MAX_THREADS:
    failures.append(f"the server grew to {max_threads} threads (bound {MAX_THREADS})")
if keys >= 20_000 and growth > 0.05:
    failures.append(f"RSS grew by {growth:.1%} after the first tenth of the keys (bound 5%)")
if failures:
    raise SystemExit("; ".join(failures))
