#!/usr/bin/env python3
"""A burst of keystrokes against the LSP loop: opens a 6,000-line Python file in the real
binary over stdio (tiny model by default), sends KEYS one-character edits back to back (each
starts a model job), then asks ghostline/stats. Prints how long sending took, how long until
the stats answer came (the LSP loop's backlog), the server's CPU seconds and its most threads.

Usage: python3 benches/burst.py [BINARY] [MODEL_PATH] [KEYS]
(defaults: target/release/ghostline, the cached smollm2-135m, 1000)
"""
import json, subprocess, sys, time, os, threading

from lsp_stdio import read_message, write_message
args = sys.argv[1:]
binary = args[0] if len(args) > 0 else "target/release/ghostline"
model = args[1] if len(args) > 1 else subprocess.run([binary, "models", "path", "smollm2-135m"], capture_output=True, text=True, check=True).stdout.strip()
keys = int(args[2]) if len(args) > 2 else 1000
p = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
def send(msg):
    write_message(p.stdin, msg)
responses = {}
cv = threading.Condition()
def reader():
    while True:
        body = read_message(p.stdout)
        if body is None: return
        if "id" in body and "method" not in body:
            with cv: responses[body["id"]] = body; cv.notify_all()
threading.Thread(target=reader, daemon=True).start()
def request(i, method, params):
    send({"jsonrpc": "2.0", "id": i, "method": method, "params": params})
    with cv:
        cv.wait_for(lambda: i in responses, timeout=600)
    return responses[i]
request(0, "initialize", {"capabilities": {}, "initializationOptions": {"model": model, "maxWaitMs": 20}})
send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
while request(1000000 + int(time.time()*1000) % 100000, "ghostline/stats", {})["result"]["engine"]["state"] != "ready": time.sleep(0.05)
text = "".join(f"def function_{i}(value):\n    return value * {i} + len(str(value))\n\n" for i in range(2000))
uri = "file:///burst/big.py"
send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}}})
request(1, "ghostline/stats", {})
def cpu():
    f = open(f"/proc/{p.pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def threads():
    return int([l for l in open(f"/proc/{p.pid}/status") if l.startswith("Threads:")][0].split()[1])
c0 = cpu(); t0 = time.time(); max_threads = 0
for k in range(keys):
    line = 3 * (k % 2000) + 1
    send({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {"textDocument": {"uri": uri, "version": k + 2},
          "contentChanges": [{"range": {"start": {"line": line, "character": 4}, "end": {"line": line, "character": 4}}, "text": "x"}]}})
    if k % 100 == 0: max_threads = max(max_threads, threads())
t_sent = time.time()
r = request(2, "ghostline/stats", {})
t1 = time.time()
print(json.dumps({"binary": binary, "keys": keys, "send_s": round(t_sent - t0, 2), "until_stats_answered_s": round(t1 - t0, 2),
                  "server_cpu_s": round(cpu() - c0, 2), "max_threads": max_threads, "jobs": r["result"]["counters"]["jobsStarted"]}))
send({"jsonrpc": "2.0", "id": 3, "method": "shutdown"}); time.sleep(0.2); send({"jsonrpc": "2.0", "method": "exit"})
