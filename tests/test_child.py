"""benchmarks.child: the one way ``bench`` starts a framework's process (issue 24).

Its environment, its message type and its exit codes; the lifetime rule (a ``kill -9``
of ``bench`` takes the child and its temporary folder along) is tested per command in
``tests/test_reliability.py``."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from backends.base import backend_info
from benchmarks import child
from common import messages
from common.progress import PROGRESS_ENV, parse_event

REPO = Path(__file__).resolve().parent.parent


def test_a_childs_environment_is_its_backends_with_the_parallel_overrides(monkeypatch, tmp_path):
    """Every child gets the suite on its path, this process's PID (it dies with it), its
    backend's variables and, on several devices, the backend's overrides in place of the
    user's values; its temporary folder is its TMPDIR and the folder it removes if bench dies."""
    info = backend_info("slim")
    assert info.parallel_overrides, "slim replaces a variable on several devices"
    for o in info.parallel_overrides:
        monkeypatch.setenv(o.name, "the user's value")
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    one = child.environment("slim", 1)
    assert all(one[o.name] == "the user's value" for o in info.parallel_overrides)
    two = child.environment("slim", 2, tmp=tmp_path)
    assert {o.name: two[o.name] for o in info.parallel_overrides} == {
        o.name: o.value for o in info.parallel_overrides}
    assert two[child.PARENT_PID_ENV] == str(os.getpid())
    assert two["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    assert two["TMPDIR"] == two[child.CHILD_TMP_ENV] == str(tmp_path)
    assert two[PROGRESS_ENV] == "events" and child.environment(progress=False)[PROGRESS_ENV] == "off"
    jax = child.environment("keras-jax", 2)
    assert jax["KERAS_BACKEND"] == "jax" and "device_count=2" in jax["XLA_FLAGS"]
    kept = child.environment(tmp=tmp_path, remove_tmp_on_death=False)
    assert kept["TMPDIR"] == str(tmp_path) and child.CHILD_TMP_ENV not in kept
    sweep = child.environment(tmp=tmp_path, tmp_as_tmpdir=False)
    assert sweep.get("TMPDIR") == os.environ.get("TMPDIR")
    assert sweep[child.CHILD_TMP_ENV] == str(tmp_path)


def test_one_message_type_and_anything_else_is_text():
    line = messages.encode("result", kind="train", batch=4, stream="x")  # a sweep row has a kind
    assert messages.decode(line) == {"bench": "result", "kind": "train", "batch": 4, "stream": "x"}
    progress = messages.encode("progress", desc="epoch 1 train", n=1, total=2, unit="batch",
                               done=False)
    assert parse_event(progress) == {"desc": "epoch 1 train", "n": 1, "total": 2, "unit": "batch",
                                     "done": False}
    assert parse_event(messages.encode("log", text="epoch 1")) is None
    for text in ('{"status": "ok"}', "| epoch 1", '{"bench": "shout"}', '{"bench": "log", oops',
                 "2026-01-01 W tensorflow: oneDNN custom operations are on"):
        assert messages.decode(text) is None, text


CHILD = """
import sys
from benchmarks import child
from common.data import DataError
child.begin()
import logging
logging.getLogger("benchmarks.test").info("working on %s", sys.argv[1])
print("framework noise", flush=True)
def work():
    if sys.argv[1] == "bad":
        raise DataError("no such folder:\\n  'x'")
    if sys.argv[1] == "crash":
        raise RuntimeError("kernel exploded\\nsecond line")
    return {"status": "ok", "value": 1.5}
sys.exit(child.serve(work, bad_input=(DataError,)))
"""


def test_a_child_answers_in_messages_and_its_exit_code_says_which(caplog):
    """A result (exit 0), bad input as one ``usage`` line (exit 2, the parent exits 2 too),
    a crash as one line with its traceback (exit 1); its log messages are logged here and
    the rest of its output is kept as its tail."""
    caplog.set_level(logging.INFO, logger="benchmarks.child")
    runs = {}
    for what in ("ok", "bad", "crash"):
        runs[what] = child.run([sys.executable, "-c", CHILD, what], child.environment(),
                               merge_stderr=False)
    ok, bad, crash = runs["ok"], runs["bad"], runs["crash"]
    assert (ok.code, ok.result, ok.error) == (0, {"status": "ok", "value": 1.5}, None)
    assert "working on ok" in caplog.text
    assert ok.tail == ["working on ok", "framework noise"]
    assert bad.code == child.EXIT_BAD_INPUT and bad.result is None
    assert bad.error == {"kind": "usage", "error": "no such folder: 'x'"}
    assert crash.code == child.EXIT_FAILED
    assert crash.error["error"] == "RuntimeError: kernel exploded"
    assert "Traceback" in crash.error["traceback"] and crash.why() == "RuntimeError: kernel exploded"


def test_a_child_past_its_deadline_is_killed_and_what_it_sent_stays():
    code = ("import sys, time; from common import messages; messages.send('result', n=1); "
            "time.sleep(60)")
    ended = child.run([sys.executable, "-c", code], child.environment(),
                      deadline=time.time() + 3, own_session=True)
    assert ended.killed and ended.code < 0 and ended.results == [{"n": 1}]
    assert ended.seconds < 30
