"""Scripts run in a process that imports TensorFlow and never keras_implicit,
as a user serving an export has it (TensorFlow may load keras itself: a
SavedModel's loader touches `tf.keras`).

One such process per test process serves every script (a fresh interpreter
per script cost a TensorFlow import, 5-6 s of CPU each). Each script runs
with fresh globals and its own `sys.argv`, its stdout and stderr (Python's
and TensorFlow's C++ logs) captured at the file-descriptor level, and fails
if it imported keras_implicit.
"""

import atexit
import json
import os
import pathlib
import subprocess
import sys
import tempfile

SERVER = r"""
import json, os, sys, traceback
import tensorflow as tf
reply = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    request = json.loads(line)
    saved = os.dup(1), os.dup(2)
    with open(request["stdout"], "w") as out, open(request["stderr"], "w") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        code = 0
        try:
            sys.argv = ["-c", *request["argv"]]
            exec(compile(request["script"], "<script>", "exec"), {"__name__": "__main__"})
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
        if "keras_implicit" in sys.modules:
            print("tf_only: the script imported keras_implicit", file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
    for fd in saved:
        os.close(fd)
    reply.write(json.dumps({"returncode": code}) + "\n")
    reply.flush()
    if "keras_implicit" in sys.modules:  # no longer TensorFlow only: the next script gets a new process
        break
"""

_server = None


def _start():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=env)
    atexit.register(_stop, server)
    return server


def _stop(server):
    server.stdin.close()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()


def run(script, *args):
    """Runs the Python source `script` with `sys.argv[1:] = args` in the
    TensorFlow-only process: a `subprocess.CompletedProcess` (returncode,
    stdout, stderr)."""
    global _server
    if _server is None or _server.poll() is not None:
        _server = _start()
    args = [str(a) for a in args]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"stdout": os.path.join(tmp, "out"), "stderr": os.path.join(tmp, "err")}
        _server.stdin.write(json.dumps({"script": script, "argv": args, **paths}) + "\n")
        _server.stdin.flush()
        line = _server.stdout.readline()
        texts = {key: pathlib.Path(path).read_text() if os.path.exists(path) else "" for key, path in paths.items()}
        if not line:  # the process died (a crash in C++): its stderr went to the file
            return subprocess.CompletedProcess(args, _server.wait(), texts["stdout"],
                                               texts["stderr"] + "\ntf_only: the process died")
        return subprocess.CompletedProcess(args, json.loads(line)["returncode"], texts["stdout"], texts["stderr"])
