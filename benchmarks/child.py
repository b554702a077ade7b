"""Every child process of ``bench`` that runs a framework, both sides of it.

Frameworks never share a process (TensorFlow and PyTorch fight over threads and
memory, and importing TensorFlow before torchvision can crash), so ``bench run``,
``throughput`` (and its ``--sweep``), ``eval``, ``predict``, ``export``,
``weights`` and ``parity`` each start ``python -m benchmarks.<worker>`` here, with

* one environment (``environment``): the user's, the suite on ``PYTHONPATH``,
  unbuffered UTF-8 output, the backend's ``BackendInfo.process_environment``
  (its ``parallel_overrides`` on several devices), the progress mode, and this
  process's PID for the lifetime rule;
* one message type (``common.messages``): JSON lines ``log``, ``progress``,
  ``result`` and ``error`` on the child's stdout; anything else it prints is text;
* one lifetime rule: the child's first call is ``begin()``, which has it die with
  ``bench`` (``PR_SET_PDEATHSIG``, or a watchdog on the parent's PID) and, when
  ``bench`` is killed, remove the temporary folder it was given (its ``TMPDIR``);
  ``bench`` itself removes that folder when the child ends, and stops the child
  when it is interrupted (``run``);
* one exit-code map (``serve``): 0 a result, 1 a failure, 2 bad input (one line,
  the parent exits 2 too), 3 a run folder held by another worker (run_worker).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from common import messages

REPO_ROOT = Path(__file__).resolve().parent.parent
PARENT_PID_ENV = "TRANSFER_BENCH_PARENT_PID"   # the child dies with this process
CHILD_TMP_ENV = "TRANSFER_BENCH_CHILD_TMP"     # the child removes this folder if bench dies
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_BUSY = 0, 1, 2, 3
TAIL_LINES = 40
log = logging.getLogger(__name__)


# ------------------------------------------------------------------ the environment

def environment(backend: str | None = None, devices: int = 1, progress: bool = True,
                tmp: Path | None = None, remove_tmp_on_death: bool = True,
                tmp_as_tmpdir: bool = True) -> dict[str, str]:
    """The environment of a child of ``bench``: this process's, plus the suite on
    ``PYTHONPATH``, unbuffered UTF-8 output, ``backend``'s variables for ``devices`` devices
    (``BackendInfo.process_environment``, set before its framework is imported), this
    process's PID (``begin``), the progress mode (``events`` for this process to render,
    ``off`` when ``progress`` is false or progress is off here) and, with ``tmp``, the
    child's temporary folder: its ``TMPDIR`` (unless ``tmp_as_tmpdir`` is false: a sweep's
    children keep the compilers' caches in the usual one), which the child removes when
    ``bench`` dies unless ``remove_tmp_on_death`` is false."""
    from common.progress import PROGRESS_ENV, progress_mode
    from common.timing import THROUGHPUT_LOCK_ENV, throughput_lock_path

    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8:backslashreplace")
    if backend is not None:
        from backends.base import backend_info

        env.update(backend_info(backend).process_environment(devices, env))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env[PARENT_PID_ENV] = str(os.getpid())
    env[PROGRESS_ENV] = "events" if progress and progress_mode() != "off" else "off"
    env.pop(CHILD_TMP_ENV, None)  # a grandchild names its own
    # this machine's throughput lock, named before TMPDIR moves into the child's folder
    env[THROUGHPUT_LOCK_ENV] = str(throughput_lock_path())
    if tmp is not None:
        if tmp_as_tmpdir:
            env["TMPDIR"] = str(tmp)
        if remove_tmp_on_death:
            env[CHILD_TMP_ENV] = str(tmp)
    return env


@contextlib.contextmanager
def temporary_folder(prefix: str) -> Iterator[Path]:
    """A new folder under this process's temporary directory for one child (its ``TMPDIR``,
    its job and answer files), removed when the block ends."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ the child's side

def die_with_parent(parent_pid: int, cleanup: tuple[Path, ...] = ()) -> None:
    """Have this process killed when ``parent_pid`` (its parent) exits, however it exits.

    ``cleanup``: folders this process must not leave behind (its temporary folder): then
    the parent's death is a SIGTERM, whose handler, or a watchdog thread polling the
    parent's PID, whichever comes first, removes them and exits."""
    def leave() -> None:
        for folder in cleanup:
            shutil.rmtree(folder, ignore_errors=True)
        os._exit(1)

    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            death = signal.SIGTERM if cleanup else signal.SIGKILL
            armed = libc.prctl(PR_SET_PDEATHSIG, death, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if cleanup and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: leave())
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        leave()
    if armed and not cleanup:
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.2 if cleanup else 1.0)
        leave()

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def die_with_bench(cleanup: tuple[Path, ...] = ()) -> None:
    """Die with the process that started this one (``die_with_parent``), removing
    ``cleanup``. Under a launcher (torchrun sets ``LOCAL_RANK``) that is the launcher, which
    itself dies with ``bench`` (``arm_death_signal``); otherwise the PID in
    ``PARENT_PID_ENV``, set by ``environment``; a process started by hand, without either,
    is left alone."""
    if "LOCAL_RANK" in os.environ:
        die_with_parent(os.getppid(), cleanup)
    elif os.environ.get(PARENT_PID_ENV):
        die_with_parent(int(os.environ[PARENT_PID_ENV]), cleanup)


def begin() -> None:
    """The first call of every child of ``bench``: die with it, removing the temporary
    folder ``environment`` gave this child, and send the suite's log messages to it as
    ``log`` messages (to the terminal, as ``bench`` shows them, when started by hand)."""
    from benchmarks.console import configure_console

    tmp = os.environ.get(CHILD_TMP_ENV)
    die_with_bench(cleanup=(Path(tmp),) if tmp else ())
    configure_console(as_messages=PARENT_PID_ENV in os.environ or "LOCAL_RANK" in os.environ)


def serve(work: Callable[[], dict], bad_input: tuple[type[BaseException], ...] = (),
          check: tuple[type[BaseException], ...] = (),
          failed: tuple[type[BaseException], ...] = (), answer: bool = True) -> int:
    """Do ``work`` and send what came of it (unless ``answer`` is false: a rank other than
    the first under a launcher); the exit code. Its dict is the ``result`` message (exit 0);
    an exception is an ``error`` message of one line: ``usage`` for ``bad_input`` (exit 2),
    ``check`` for ``check``, ``failed`` for ``failed`` and for anything else, a crash, whose
    message also holds the ``traceback`` (exit 1)."""
    kind, extra = None, {}
    try:
        result = work()
    except check as err:  # first: a failed check may be a kind of bad input (BackendError)
        kind, text = "check", " ".join(str(err).split())
    except bad_input as err:
        kind, text = "usage", " ".join(str(err).split())
    except failed as err:
        kind, text = "failed", (str(err).splitlines() or [""])[0]
    except Exception as err:  # a framework's crash: one line, and where it came from
        kind, text = "failed", (f"{type(err).__name__}: {err}".splitlines() or [""])[0]
        extra = {"traceback": traceback.format_exc()}
    if kind is None:
        if answer:
            messages.send("result", **result)
        return EXIT_OK
    if answer:
        messages.send("error", kind=kind, error=text, **extra)
    return EXIT_BAD_INPUT if kind == "usage" else EXIT_FAILED


# ------------------------------------------------------------------ bench's side

@dataclass
class Ended:
    """What came of one child: its exit ``code`` (negative: the signal that ended it), its
    ``result`` messages, its ``error`` message, the last lines of its output that were not
    messages (and its log messages' text), how long it ran, and whether it was ``killed``
    at its deadline."""

    code: int
    results: list[dict] = field(default_factory=list)
    error: dict | None = None
    tail: list[str] = field(default_factory=list)
    seconds: float = 0.0
    killed: bool = False

    @property
    def result(self) -> dict | None:
        return self.results[-1] if self.results else None

    def reason(self) -> str:
        return f"signal {-self.code}" if self.code < 0 else f"exit code {self.code}"

    def last_line(self) -> str:
        return next((t for t in reversed(self.tail) if t.strip()), "no output")

    def why(self) -> str:
        """One line: the child's own error, or how it ended and its last line."""
        if self.error is not None:
            return self.error["error"]
        return f"{self.reason()}: {self.last_line()}"


def arm_death_signal() -> None:
    """In a launcher's process, before it starts (``preexec_fn``): SIGTERM when ``bench``
    exits (Linux); torchrun then stops its workers. A launcher cannot call ``begin``."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def command(module: str, args: list = (), launcher: list[str] = ()) -> list[str]:
    """``python [LAUNCHER...] -m module args...``."""
    return [sys.executable, *launcher, "-m", module, *map(str, args)]


def run(argv: list[str], env: dict[str, str], *,
        on_log: Callable[[str], None] | None = None,
        on_progress: Callable[[dict], None] | None = None,
        on_result: Callable[[dict], None] | None = None,
        on_text: Callable[[str], None] | None = None,
        on_start: Callable[[subprocess.Popen], None] | None = None,
        merge_stderr: bool = True, deadline: float | None = None,
        own_session: bool = False, pass_fds: tuple[int, ...] = (), launched: bool = False,
        stop: Callable[[subprocess.Popen], None] | None = None) -> Ended:
    """Run ``argv`` (``command``) with ``env`` (``environment``) until it ends, reading its
    stdout line by line: ``log`` messages to ``on_log`` (default: logged here), ``progress``
    to ``on_progress``, each ``result`` to ``on_result``, other lines to ``on_text``.

    ``merge_stderr``: its stderr is read as text lines too (else its tail is kept);
    ``deadline`` (``time.time()``): killed then, with its process group when
    ``own_session``; ``own_session``: Ctrl-C reaches this process only; ``pass_fds``:
    descriptors it inherits; ``launched``: ``argv`` starts a launcher (torchrun), which gets
    ``arm_death_signal``.
    When this process is interrupted, or a callback raises, the child is stopped (``stop``,
    default: killed with its group) before the exception goes on."""
    t0 = time.time()
    ended = Ended(code=0)
    # stderr apart: an unnamed file (where bench's own temporary files go), read at the end
    with contextlib.nullcontext() if merge_stderr else \
            tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if merge_stderr else stderr,
                                encoding="utf-8", errors="replace", env=env, pass_fds=pass_fds,
                                start_new_session=own_session,
                                preexec_fn=arm_death_signal if launched else None)
        timer = None
        if deadline is not None:
            def expire() -> None:
                ended.killed = True
                kill(proc, own_session)

            timer = threading.Timer(max(0.0, deadline - time.time()), expire)
            timer.daemon = True
            timer.start()
        try:
            if on_start is not None:
                on_start(proc)
            assert proc.stdout is not None
            for line in proc.stdout:
                _dispatch(line.rstrip("\n"), ended, on_log, on_progress, on_result, on_text)
            ended.code = proc.wait()
        except BaseException:
            (stop or (lambda p: kill(p, own_session)))(proc)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if not merge_stderr:
            stderr.seek(0)
            ended.tail = (ended.tail + stderr.read().strip().splitlines())[-TAIL_LINES:]
    ended.seconds = time.time() - t0
    return ended


def run_json_child(module: str, args: list, progress: bool = False, launcher: list[str] = (),
                   backend: str | None = None, devices: int = 1) -> dict:
    """The ``result`` of ``python [LAUNCHER] -m module *args`` (a child that ``serve``s), or
    ``{"status": "failed", "error": one line}``. ``progress``: its log messages are logged
    here as they come (a long child such as pretraining shows its epochs); ``backend`` and
    ``devices``: its environment (``environment``)."""
    from common.progress import ProgressRelay

    relay = ProgressRelay() if progress else None
    with temporary_folder(f"bench-{module.rsplit('.', 1)[-1]}-") as tmp:
        env = environment(backend, devices, progress=progress, tmp=tmp)
        try:
            ended = run(command(module, args, launcher), env, merge_stderr=False,
                        launched=bool(launcher),
                        on_log=log.info if progress else (lambda text: None),
                        on_progress=relay.feed if relay else None)
        finally:
            if relay is not None:
                relay.close()
    if ended.error is not None:
        failed = {"status": "failed", "error": ended.error["error"]}
        if ended.error.get("traceback"):
            failed["traceback"] = ended.error["traceback"]
        return failed
    if ended.result is not None:
        return ended.result
    return {"status": "failed", "error": f"{module} exited with {ended.code}: {ended.last_line()}"}


def run_per_backend(module: str, backend: str, args: list, describe) -> bool:
    """Run ``python -m module --json --backend NAME *args`` for each backend named by
    ``backend`` ("all" or one name), printing ``describe(result) -> (line, met)``;
    True when every available backend met its target (unavailable ones are skipped)."""
    from backends.base import availability, default_backends

    ok = True
    for name in default_backends() if backend == "all" else [backend]:
        reason = availability(name)
        if reason:
            print(f"{name}: skipped ({reason})")
            continue
        result = run_json_child(module, ["--json", "--backend", name, *args], backend=name)
        if result.get("status") == "failed":
            print(f"{name}: failed ({result['error']})")
            ok = False
            continue
        line, met = describe(result)
        print(line)
        ok &= met
    return ok


def _dispatch(line: str, ended: Ended, on_log, on_progress, on_result, on_text) -> None:
    message = messages.decode(line)
    if message is None:
        ended.tail = (ended.tail + [line])[-TAIL_LINES:]
        if on_text is not None:
            on_text(line)
        return
    kind = message.pop(messages.KEY)
    if kind == "log":
        ended.tail = (ended.tail + message["text"].splitlines())[-TAIL_LINES:]
        (on_log or log.info)(message["text"])
    elif kind == "progress":
        if on_progress is not None:
            on_progress(message)
    elif kind == "result":
        ended.results.append(message)
        if on_result is not None:
            on_result(message)
    else:
        ended.error = message


def kill(proc: subprocess.Popen, group: bool = False) -> None:
    """SIGKILL to the child (and its process group when it has its own), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
