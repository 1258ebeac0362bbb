"""Run the fuzz targets of :mod:`tests.fuzz.targets` with atheris (coverage-guided,
libFuzzer underneath), one subprocess per target.

    python -m tests.fuzz.run --list
    python -m tests.fuzz.run --runs 1000000            # every target, one at a time
    python -m tests.fuzz.run -t rtcp -t twcc --seconds 300
    python -m tests.fuzz.run -t envelope --runs 50000 --stop-on-crash -v

Each target starts from its seeds (``SEEDS``) and the files already kept in
``tests/fuzz/regressions/<target>/``; libFuzzer's ``-dict`` gets its tokens
(``DICTIONARIES``). Every call is timed: one over ``--slow-ms`` ms (the fastest of three
tries, to ignore a GC pause) counts as a crash (``SlowInput``), like an exception that
escapes the target; a call running ``--timeout`` s is a libFuzzer timeout. By default the
run goes on after a crash (each distinct crash, by exception type and innermost project
frame, is reported once); ``--stop-on-crash`` stops at the first, as libFuzzer does.
Crashing inputs are written to ``<regressions-dir>/<target>/<sha1 of the input>``, where
``tests/unit/test_fuzz.py`` replays them.

Printed per target: inputs executed, execs/s (from libFuzzer's start, after the imports
and the instrumentation, to the end), wall time (s, start-up included), coverage (libFuzzer ``cov``: instrumented edges of the Python
code, at start -> at the end, and the new ones), corpus units added, crashes.

:func:`run_target` is the same thing as a function (the bounded run in the test suite
uses it). Exit status: 0 when nothing crashed, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Crash", "Result", "REGRESSIONS", "main", "run_target", "target_names"]

ROOT = Path(__file__).resolve().parents[2]
"""The repository root (the child's working directory and ``PYTHONPATH``)."""
REGRESSIONS = Path(__file__).resolve().parent / "regressions"
"""Where crashing inputs are kept: ``<target>/<sha1>``."""

_CHILD_FLAG = "--child"
# Packages whose code is instrumented for coverage; aiortc only for the target that
# runs aiortc's SDP parser (instrumenting it costs start-up time).
_INSTRUMENT = ("sfu", "signaling")
_INSTRUMENT_EXTRA = {"sdp_offer": ("aiortc",)}
_PROJECT_DIRS = (str(ROOT / "sfu"), str(ROOT / "signaling"), str(ROOT / "tests" / "fuzz"))


@dataclass(slots=True)
class Crash:
    """One distinct crash: ``sha1`` of the input (its file name), ``signature``
    (exception type and innermost project frame, or ``timeout``/``oom``), the traceback
    text and the path the input was written to."""

    sha1: str
    signature: str
    traceback: str
    path: Path | None = None


@dataclass(slots=True)
class Result:
    """What one target's run did.

    ``execs``: inputs executed; ``execs_per_s``: their rate from libFuzzer's start
    (after the imports and the instrumentation) to the end; ``wall_s``: the subprocess's wall time, s; ``cov_start``/``cov_end``:
    libFuzzer ``cov`` (edges) after the seed corpus and at the end; ``features``: its
    ``ft`` at the end; ``new_units``: corpus units added; ``crashes``: distinct crashes;
    ``returncode`` of the child (0 when it finished its runs or time); ``log``: its output.
    """

    target: str
    execs: int = 0
    execs_per_s: int = 0
    wall_s: float = 0.0
    cov_start: int = 0
    cov_end: int = 0
    features: int = 0
    new_units: int = 0
    crashes: list[Crash] = field(default_factory=list)
    returncode: int | None = None
    log: str = ""

    @property
    def ok(self) -> bool:
        """True when the run finished with inputs executed and nothing crashed."""
        return self.returncode == 0 and self.execs > 0 and not self.crashes


def target_names() -> list[str]:
    """The names of every target, in :data:`~tests.fuzz.targets.TARGETS` order."""
    from tests.fuzz.targets import TARGETS

    return list(TARGETS)


def _dict_line(token: bytes) -> str:
    """One libFuzzer dictionary entry: the token quoted, non-printables as ``\\xNN``."""
    out = []
    for b in token:
        if b in (0x22, 0x5C) or not 0x20 <= b < 0x7F:
            out.append(f"\\x{b:02x}")
        else:
            out.append(chr(b))
    return '"' + "".join(out) + '"'


def _write_inputs(directory: Path, inputs: list[bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for data in inputs:
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)


def _last_int(pattern: str, text: str) -> int:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else 0


def _parse_stats(result: Result, log: str) -> None:
    """Fill ``result`` from libFuzzer's output (``-print_final_stats=1``)."""
    result.execs = _last_int(r"stat::number_of_executed_units:\s*(\d+)", log) or _last_int(r"Done (\d+) runs", log)
    result.new_units = _last_int(r"stat::new_units_added:\s*(\d+)", log)
    inited = re.search(r"INITED cov: (\d+)", log)
    result.cov_start = int(inited.group(1)) if inited else 0
    result.cov_end = _last_int(r"cov: (\d+)", log)
    result.features = _last_int(r"ft: (\d+)", log)


def run_target(
    name: str,
    *,
    runs: int | None = None,
    seconds: int | None = None,
    max_len: int = 4096,
    slow_ms: float = 100.0,
    timeout_s: int = 10,
    rss_limit_mb: int = 2048,
    seed: int | None = None,
    corpus_dir: Path | None = None,
    regressions_dir: Path = REGRESSIONS,
    stop_on_crash: bool = False,
    value_profile: bool = False,
    echo: bool = False,
) -> Result:
    """Fuzz target ``name`` in a subprocess until ``runs`` inputs or ``seconds`` s,
    whichever comes first (neither: until stopped).

    Args:
        name: a key of :data:`~tests.fuzz.targets.TARGETS`.
        runs, seconds: libFuzzer's ``-runs`` and ``-max_total_time``.
        max_len: largest input, bytes.
        slow_ms: a call slower than this (ms, best of three) is a crash.
        timeout_s: a call running this long (s) is a libFuzzer timeout.
        rss_limit_mb: libFuzzer's memory limit (MB).
        seed: libFuzzer's random seed (None: random).
        corpus_dir: keep the corpus in ``corpus_dir/<name>`` (None: a temporary one).
        regressions_dir: crashing inputs go to ``regressions_dir/<name>/<sha1>``.
        stop_on_crash: stop at the first crash instead of going on.
        value_profile: libFuzzer's ``-use_value_profile=1``.
        echo: print libFuzzer's progress lines (prefixed with the target) as they come.

    Returns:
        the :class:`Result` (crashes already written to ``regressions_dir``).

    Raises:
        KeyError: unknown target.
    """
    from tests.fuzz.targets import DICTIONARIES, SEEDS, TARGETS

    if name not in TARGETS:
        raise KeyError(f"unknown fuzz target {name!r}")
    result = Result(name)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
        work = Path(tmp)
        seeds = work / "seeds"
        _write_inputs(seeds, SEEDS[name]())
        kept = regressions_dir / name
        if kept.is_dir():
            _write_inputs(seeds, [p.read_bytes() for p in sorted(kept.iterdir()) if p.is_file()])
        corpus = corpus_dir / name if corpus_dir is not None else work / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        crash_dir = work / "crashes"
        crash_dir.mkdir()
        config = {"target": name, "crash_dir": str(crash_dir), "slow_ms": slow_ms, "stop_on_crash": stop_on_crash}
        fuzzer_args = [
            f"-max_len={max_len}",
            f"-timeout={timeout_s}",
            f"-rss_limit_mb={rss_limit_mb}",
            f"-artifact_prefix={crash_dir}/libfuzzer-",
            "-print_final_stats=1",
        ]
        if runs is not None:
            fuzzer_args.append(f"-runs={runs}")
        if seconds is not None:
            fuzzer_args.append(f"-max_total_time={seconds}")
        if seed is not None:
            fuzzer_args.append(f"-seed={seed}")
        if value_profile:
            fuzzer_args.append("-use_value_profile=1")
        if name in DICTIONARIES:  # text: mutate whole SDPs/JSON from the start, not a short prefix
            fuzzer_args.append("-len_control=0")
            dict_path = work / "tokens.dict"
            dict_path.write_text("\n".join(_dict_line(t) for t in DICTIONARIES[name]) + "\n")
            fuzzer_args.append(f"-dict={dict_path}")
        command = [sys.executable, "-m", "tests.fuzz.run", _CHILD_FLAG, json.dumps(config), *fuzzer_args, str(corpus), str(seeds)]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        log_lines: list[str] = []
        start = time.monotonic()
        fuzz_start = None  # libFuzzer's first line ("INFO: Seed: ..."): start-up done
        with subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace",
        ) as child:
            assert child.stdout is not None
            for line in child.stdout:
                log_lines.append(line)
                if fuzz_start is None and line.startswith("INFO: Seed:"):
                    fuzz_start = time.monotonic()
                if echo and (" pulse " in line or "DONE" in line or line.startswith(("FUZZ-CRASH", "==", "ERROR"))):
                    print(f"[{name}] {line.rstrip()}", flush=True)
            result.returncode = child.wait()
        end = time.monotonic()
        result.wall_s = end - start
        result.log = "".join(log_lines)
        _parse_stats(result, result.log)
        if fuzz_start is not None and end > fuzz_start:
            result.execs_per_s = round(result.execs / (end - fuzz_start))
        result.crashes = _collect_crashes(name, crash_dir, regressions_dir / name)
    return result


def _collect_crashes(name: str, crash_dir: Path, keep: Path) -> list[Crash]:
    """The child's crashing inputs (its own ``<sha1>`` + ``<sha1>.txt`` files, and
    libFuzzer's ``libfuzzer-{crash,timeout,oom}-*`` artifacts), copied to ``keep``."""
    crashes: dict[str, Crash] = {}
    for path in sorted(crash_dir.iterdir()):
        if path.suffix == ".txt":
            continue
        data = path.read_bytes()
        sha1 = hashlib.sha1(data).hexdigest()
        if path.name.startswith("libfuzzer-"):
            kind = path.name[len("libfuzzer-") :].split("-", 1)[0]
            if sha1 in crashes or kind == "crash" and (crash_dir / f"{sha1}.txt").exists():
                continue  # the exception the child already reported
            crash = Crash(sha1, f"libFuzzer {kind}", "")
        else:
            info = (crash_dir / f"{path.name}.txt").read_text()
            signature, _, text = info.partition("\n")
            crash = Crash(sha1, signature, text)
        keep.mkdir(parents=True, exist_ok=True)
        crash.path = keep / sha1
        if not crash.path.exists():
            crash.path.write_bytes(data)
        crashes.setdefault(sha1, crash)
    return list(crashes.values())


# --- the child: one target under atheris ---------------------------------------------------


class SlowInput(Exception):
    """A call took longer than the slow limit (best of three tries)."""


def _signature(exc: BaseException) -> str:
    """Exception type and the innermost frame in the project's code (``file:line``)."""
    where = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.startswith(_PROJECT_DIRS):
            where = f"{os.path.relpath(frame.filename, ROOT)}:{frame.lineno}"
    return f"{type(exc).__name__} at {where}"


def _child(config: dict[str, object], fuzzer_args: list[str]) -> None:
    import atheris

    name = str(config["target"])
    crash_dir = Path(str(config["crash_dir"]))
    slow_s = float(config["slow_ms"]) / 1000.0  # type: ignore[arg-type]
    stop = bool(config["stop_on_crash"])
    atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=[*_INSTRUMENT, *_INSTRUMENT_EXTRA.get(name, ())]):
        from tests.fuzz.targets import TARGETS
    target = TARGETS[name]
    seen: set[str] = set()
    clock = time.perf_counter

    def report(data: bytes, exc: BaseException) -> None:
        signature = f"SlowInput in {name}" if isinstance(exc, SlowInput) else _signature(exc)
        if signature in seen:
            return
        seen.add(signature)
        sha1 = hashlib.sha1(data).hexdigest()
        (crash_dir / sha1).write_bytes(data)
        text = "".join(traceback.format_exception(exc))
        (crash_dir / f"{sha1}.txt").write_text(f"{signature}\n{text}")
        print(f"FUZZ-CRASH {sha1} {signature}\n{text}", file=sys.stderr, flush=True)

    def one_input(data: bytes) -> None:
        start = clock()
        try:
            target(data)
            elapsed = clock() - start
            if elapsed > slow_s:
                for _ in range(2):
                    again = clock()
                    target(data)
                    elapsed = min(elapsed, clock() - again)
                if elapsed > slow_s:
                    raise SlowInput(f"{elapsed * 1000:.0f} ms for {len(data)} bytes (limit {slow_s * 1000:.0f} ms)")
        except Exception as exc:  # a bug by the targets' definition
            report(data, exc)
            if stop:
                raise

    atheris.Setup([sys.argv[0], *fuzzer_args], one_input)
    atheris.Fuzz()


# --- the command line ---------------------------------------------------------------------


def _table(results: list[Result]) -> str:
    head = f"{'target':<17} {'inputs':>10} {'execs/s':>8} {'wall s':>7} {'cov start->end (new)':>22} {'units':>6} {'crashes':>7}"
    rows = [head, "-" * len(head)]
    for r in results:
        cov = f"{r.cov_start}->{r.cov_end} (+{r.cov_end - r.cov_start})"
        rows.append(
            f"{r.target:<17} {r.execs:>10} {r.execs_per_s:>8} {r.wall_s:>7.1f} {cov:>22} {r.new_units:>6} {len(r.crashes):>7}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring); returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [_CHILD_FLAG]:
        _child(json.loads(argv[1]), argv[2:])
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz.run",
        description="Fuzz the parsers of untrusted input with atheris, one subprocess per target; "
        "crashing inputs go to tests/fuzz/regressions/<target>/<sha1>.",
    )
    parser.add_argument("-t", "--target", action="append", metavar="NAME", help="a target to run (repeatable; default: all)")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--runs", type=int, help="inputs per target (libFuzzer -runs)")
    parser.add_argument("--seconds", type=int, help="time per target, s (libFuzzer -max_total_time)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="targets run at the same time (default 1)")
    parser.add_argument("--max-len", type=int, default=4096, help="largest input, bytes (default 4096)")
    parser.add_argument("--slow-ms", type=float, default=100.0, help="a call slower than this is a crash, ms (default 100)")
    parser.add_argument("--timeout", type=int, default=10, help="a call running this long is a hang, s (default 10)")
    parser.add_argument("--rss-limit-mb", type=int, default=2048, help="memory limit, MB (default 2048)")
    parser.add_argument("--seed", type=int, help="libFuzzer random seed (default: random)")
    parser.add_argument("--corpus-dir", type=Path, help="keep each target's corpus in DIR/<target> (default: temporary)")
    parser.add_argument("--regressions-dir", type=Path, default=REGRESSIONS, help=f"where crashing inputs go (default {REGRESSIONS.relative_to(ROOT)})")
    parser.add_argument("--stop-on-crash", action="store_true", help="stop a target at its first crash")
    parser.add_argument("--value-profile", action="store_true", help="libFuzzer -use_value_profile=1")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each target's whole libFuzzer output at its end")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only the summary")
    args = parser.parse_args(argv)
    names = target_names()
    if args.list:
        from tests.fuzz.targets import TARGETS

        for name, fn in TARGETS.items():
            print(f"{name:<17} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    unknown = [t for t in args.target or [] if t not in names]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; --list shows them")
    if args.runs is None and args.seconds is None:
        parser.error("give --runs and/or --seconds")
    selected = args.target or names
    lock = threading.Lock()

    def one(name: str) -> Result:
        result = run_target(
            name,
            runs=args.runs,
            seconds=args.seconds,
            max_len=args.max_len,
            slow_ms=args.slow_ms,
            timeout_s=args.timeout,
            rss_limit_mb=args.rss_limit_mb,
            seed=args.seed,
            corpus_dir=args.corpus_dir,
            regressions_dir=args.regressions_dir,
            stop_on_crash=args.stop_on_crash,
            value_profile=args.value_profile,
            echo=not args.quiet,
        )
        with lock:
            if args.verbose:
                print(result.log)
            status = "ok" if result.ok else f"FAILED (exit {result.returncode})"
            print(
                f"{name}: {result.execs} inputs, {result.execs_per_s} execs/s, {result.wall_s:.1f} s, "
                f"cov {result.cov_start}->{result.cov_end} (+{result.cov_end - result.cov_start}), "
                f"{len(result.crashes)} crash(es): {status}",
                flush=True,
            )
            for crash in result.crashes:
                where = crash.path.relative_to(ROOT) if crash.path and crash.path.is_relative_to(ROOT) else crash.path
                print(f"  CRASH {crash.signature} -> {where}", flush=True)
            if result.returncode not in (0, None) and not result.crashes:
                print("\n".join(result.log.splitlines()[-30:]), flush=True)
        return result

    print(f"fuzzing {len(selected)} target(s) with {sys.executable}", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, selected))
    print()
    print(_table(results))
    total = sum(len(r.crashes) for r in results)
    print(f"\n{total} crash(es)" + (f", inputs in {args.regressions_dir}" if total else ""))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
