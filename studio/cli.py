"""`python -m studio.cli` — Duet Studio without the browser, over the daemon protocol.

Exit codes (also in --help and docs/protocol.md), for scripts:
    0  ok
    1  the job failed
    2  bad usage or bad input (a file, a project, a voice, an unknown job id, …)
    3  the daemon is unreachable
    4  the job was cancelled
    5  a protocol or server error (version mismatch, daemon busy, daemon bug)
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

from shared import protocol as p
from shared.scene import ProjectError, import_multitalk_json, load_project, save_project
from studio.client import (DaemonClient, DaemonDied, DaemonError, DaemonUnreachable,
                           RequestFailed)

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_CANCELLED, EXIT_SERVER = range(6)
# Error codes that mean "what you asked for is wrong", as opposed to a server-side problem.
INPUT_ERROR_CODES = {"bad_request", "too_large", "not_found", "not_ready", "conflict",
                     "unknown_voice", "invalid_project", "backend_unavailable"}

EPILOG = """\
exit codes: 0 ok, 1 job failed, 2 bad usage or input, 3 daemon unreachable,
            4 job cancelled, 5 protocol or server error
environment: DUET_DAEMON (daemon address), DUET_CURVE_DIR (client keys)"""


class UsageError(Exception):
    """Bad arguments or an unreadable input file (exit 2)."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--daemon", default=argparse.SUPPRESS, metavar="ADDR",
                        help=f"daemon address (default $DUET_DAEMON or {p.DEFAULT_ADDRESS})")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                        help="seconds to wait for a reply (default 10)")
    common.add_argument("--curve-dir", type=Path, default=argparse.SUPPRESS,
                        help="folder with server.key and client.key_secret, for a daemon that "
                             "requires CURVE (default $DUET_CURVE_DIR)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print results as JSON")
    parser = argparse.ArgumentParser(
        prog="python -m studio.cli", parents=[common], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Duet Studio from the command line: talk to the daemon (./run_daemon.sh).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    command("info", "what the daemon runs: backends, devices, queue, TTS")
    v = command("voices", "the voice catalog")
    v.add_argument("--lang", help="only this language (e.g. en-us, zh)")
    v.add_argument("--installed", action="store_true", help="only voices installed now")
    t = command("tts", "speak one line into a WAV file")
    t.add_argument("--text", required=True)
    t.add_argument("--voice", required=True, help="a voice id, e.g. af_heart or espeak:en-us")
    t.add_argument("--speed", type=float, default=1.0)
    t.add_argument("--out", type=Path, required=True, help="the .wav file to write")
    r = command("render", "render a project (.duet zip) or an official MultiTalk input JSON")
    r.add_argument("scene", type=Path, metavar="SCENE")
    r.add_argument("--out", type=Path, help="where to write the video (required unless --no-wait)")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--draft", dest="mode", action="store_const", const="draft",
                      help="CPU animatic (default: the project's own setting)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the MultiTalk model (needs its weights on the daemon)")
    r.add_argument("--srt", type=Path, help="also write the subtitles (SRT) here")
    r.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    j = command("jobs", "the daemon's jobs, newest first")
    j.add_argument("--limit", type=int, default=50)
    for name, what in (("status", "one job's state and progress"), ("cancel", "cancel a job"),
                       ("delete", "delete a finished job and its files")):
        command(name, what).add_argument("job_id", metavar="ID")
    f = command("fetch", "download a job's artifact")
    f.add_argument("job_id", metavar="ID")
    f.add_argument("--artifact", default="video.mp4", choices=p.ARTIFACTS)
    f.add_argument("--out", type=Path, required=True)
    return parser


def main(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> int:
    env = dict(os.environ) if env is None else env
    args = build_parser().parse_args(argv)
    address = getattr(args, "daemon", None) or env.get("DUET_DAEMON") or p.DEFAULT_ADDRESS
    curve_dir = getattr(args, "curve_dir", None) or (Path(env["DUET_CURVE_DIR"])
                                                     if env.get("DUET_CURVE_DIR") else None)
    out = Output(sys.stdout, sys.stderr, as_json=getattr(args, "json", False))
    client = DaemonClient(address, timeout=getattr(args, "timeout", 10.0), curve_dir=curve_dir)
    try:
        return COMMANDS[args.command](client, args, out)
    except UsageError as e:
        out.error(str(e))
        return EXIT_USAGE
    except RequestFailed as e:
        out.error(f"{e.code}: {e.message}")
        return EXIT_USAGE if e.code in INPUT_ERROR_CODES else EXIT_SERVER
    except DaemonUnreachable as e:
        out.error(str(e))
        return EXIT_UNREACHABLE
    except DaemonDied as e:
        out.error(f"the daemon stopped: {e}")
        return EXIT_UNREACHABLE
    except DaemonError as e:
        out.error(str(e))
        return EXIT_SERVER
    except OSError as e:
        out.error(f"{getattr(e, 'filename', None) or ''}: {e.strerror or e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130
    finally:
        client.close()


class Output:
    def __init__(self, stdout: TextIO, stderr: TextIO, as_json: bool):
        self.stdout, self.stderr, self.as_json = stdout, stderr, as_json

    def print(self, text: str = "") -> None:
        print(text, file=self.stdout, flush=True)

    def data(self, value: Any) -> None:
        print(json.dumps(_jsonable(value), indent=2, ensure_ascii=False), file=self.stdout,
              flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.stderr, flush=True)

    def error(self, text: str) -> None:
        print(f"error: {text}", file=self.stderr, flush=True)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not isinstance(getattr(value, f.name), bytes)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------ commands

def cmd_info(client: DaemonClient, args, out: Output) -> int:
    info = client.info()
    if out.as_json:
        out.data(info)
        return EXIT_OK
    out.print(f"Duet Studio daemon {info.package} (protocol {info.protocol}, torch {info.torch}, "
              f"Python {info.python}){', CURVE-secured' if info.secure else ''}")
    par = info.parallel
    out.print(f"ranks: {par.world_size} (ulysses {par.ulysses_size} × ring {par.ring_size}"
              f"{', t5_fsdp' if par.t5_fsdp else ''}{', dit_fsdp' if par.dit_fsdp else ''})")
    for d in info.devices:
        out.print(f"  rank {d.rank}: {d.name}, {_gib(d.memory_used)} / {_gib(d.memory_total)} used")
    out.print("backends:")
    for b in info.backends:
        out.print(f"  {b.name:<10} {b.state:<12} modes: {', '.join(b.modes) or '-'}")
        out.print(f"  {'':<10} {b.detail}")
    q = info.queue
    out.print(f"queue: {q.queued} queued, running: {q.running or '-'}; "
              f"{q.done} done, {q.failed} failed, {q.cancelled} cancelled")
    out.print(f"voices: {info.voices.installed} of {info.voices.total} installed "
              f"({', '.join(info.voices.backends)}; {', '.join(info.voices.languages)})")
    return EXIT_OK


def cmd_voices(client: DaemonClient, args, out: Output) -> int:
    voices = [v for v in client.voices()
              if (not args.installed or v.installed) and (not args.lang or v.lang == args.lang)]
    if out.as_json:
        out.data(voices)
        return EXIT_OK
    for v in voices:
        out.print(f"{v.id:<22} {v.lang:<6} {v.backend:<7} {'installed' if v.installed else '-':<9} "
                  f"{v.label}")
    return EXIT_OK


def cmd_tts(client: DaemonClient, args, out: Output) -> int:
    speech = client.tts(args.text, args.voice, args.speed)
    _write(args.out, speech.wav)
    if speech.warning:
        out.note(f"warning: {speech.warning}")
    if out.as_json:
        out.data(speech)
    else:
        out.print(f"{args.out}: {speech.duration:.2f} s at {speech.sample_rate} Hz, voice "
                  f"{speech.voice_used} ({speech.backend})")
    return EXIT_OK


def cmd_render(client: DaemonClient, args, out: Output) -> int:
    if not args.no_wait and args.out is None:
        raise UsageError("render needs --out FILE.mp4 (or --no-wait)")
    project, scene_mode = _read_scene(args.scene)
    mode = args.mode or scene_mode
    job = client.submit(project, mode)
    out.note(f"job {job.id} queued ({mode}"
             f"{f', position {job.queue_position}' if job.queue_position else ''})")
    if args.no_wait:
        out.data(job) if out.as_json else out.print(job.id)
        return EXIT_OK
    bar = ProgressBar(out.stderr)
    try:
        final = client.wait(job.id, on_event=bar.update)
    except KeyboardInterrupt:
        bar.finish()
        out.note(f"stopped waiting; job {job.id} goes on (python -m studio.cli cancel {job.id})")
        raise
    bar.finish()
    return _finish_render(client, final, args, out)


def _finish_render(client: DaemonClient, job: p.JobInfo, args, out: Output) -> int:
    for note in job.warnings:
        out.note(f"note: {note}")
    if job.state == "failed":
        out.error(f"job {job.id} failed: {job.error}")
        return EXIT_JOB_FAILED
    if job.state == "cancelled":
        out.error(f"job {job.id} was cancelled")
        return EXIT_CANCELLED
    video = client.download(job.id, "video.mp4", args.out)
    if args.srt is not None:
        client.download(job.id, "subtitles.srt", args.srt)
    if out.as_json:
        out.data(job)
    else:
        out.print(f"{video.path} ({video.size / 1e6:.1f} MB, {job.duration or 0:.1f} s)")
    return EXIT_OK


def _read_scene(path: Path) -> tuple[bytes, str]:
    """The project bytes to submit and the mode the project asks for."""
    try:
        if path.suffix.lower() == ".json":
            scene = import_multitalk_json(path)
            return save_project(scene), scene.settings.mode
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UsageError(f"{path}: cannot read ({e.strerror or e})") from None
        return data, load_project(data).settings.mode
    except ProjectError as e:
        raise UsageError(f"{path}: {e}") from None


def cmd_jobs(client: DaemonClient, args, out: Output) -> int:
    jobs = client.jobs(args.limit)
    if out.as_json:
        out.data(jobs)
        return EXIT_OK
    out.print(f"{'ID':<13} {'STATE':<10} {'MODE':<6} {'CREATED':<17} {'PROGRESS':<22} TITLE")
    for job in jobs:
        out.print(f"{job.id:<13} {job.state:<10} {job.mode:<6} {_when(job.created):<17} "
                  f"{_progress_text(job):<22} {job.title}")
    return EXIT_OK


def cmd_status(client: DaemonClient, args, out: Output) -> int:
    job = client.status(args.job_id)
    if out.as_json:
        out.data(job)
        return EXIT_OK
    out.print(f"job {job.id}: {job.state} ({job.mode}, {job.backend}), attempts {job.attempts}")
    out.print(f"  created {_when(job.created)}"
              + (f", started {_when(job.started)}" if job.started else "")
              + (f", finished {_when(job.finished)}" if job.finished else ""))
    if job.queue_position:
        out.print(f"  queue position {job.queue_position}")
    if job.progress:
        out.print(f"  {_progress_text(job)}")
    if job.error:
        out.print(f"  error: {job.error}")
    for note in job.warnings:
        out.print(f"  note: {note}")
    for a in job.artifacts:
        out.print(f"  {a.name:<14} {a.size:>12} bytes  sha256 {a.sha256}")
    return EXIT_OK


def cmd_cancel(client: DaemonClient, args, out: Output) -> int:
    job = client.cancel(args.job_id)
    if out.as_json:
        out.data(job)
    elif job.state == "running":
        out.print(f"job {job.id}: cancelling (it stops at its next step)")
    else:
        out.print(f"job {job.id}: {job.state}")
    return EXIT_OK


def cmd_delete(client: DaemonClient, args, out: Output) -> int:
    client.delete(args.job_id)
    out.print(f"job {args.job_id}: deleted")
    return EXIT_OK


def cmd_fetch(client: DaemonClient, args, out: Output) -> int:
    got = client.download(args.job_id, args.artifact, args.out)
    out.print(f"{got.path} ({got.size} bytes, sha256 {got.sha256})")
    return EXIT_OK


COMMANDS = {"info": cmd_info, "voices": cmd_voices, "tts": cmd_tts, "render": cmd_render,
            "jobs": cmd_jobs, "status": cmd_status, "cancel": cmd_cancel, "delete": cmd_delete,
            "fetch": cmd_fetch}


# ------------------------------------------------------------------------------------ helpers

class ProgressBar:
    """One status line on stderr: phase, a bar, step/total, clip, ETA. On a terminal it is
    redrawn in place; otherwise a line is printed per phase and at most every 5 s."""

    WIDTH = 24

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.tty = stream.isatty()
        self._phase = None
        self._last_line = 0.0
        self._drawn = False

    def update(self, event: Any) -> None:
        if isinstance(event, p.JobChangedEvent):
            job = event.job
            if job.state == "queued":
                self._line(f"queued{f' (position {job.queue_position})' if job.queue_position else ''}",
                           force=True)
            elif job.state == "running" and self._phase is None:
                self._line("running", force=True)
            return
        if isinstance(event, p.ProgressEvent):
            new_phase = event.phase != self._phase
            self._phase = event.phase
            self._line(_progress_line(event, self.WIDTH), force=new_phase)

    def _line(self, text: str, force: bool) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self._drawn = True
        elif force or now - self._last_line >= 5.0:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_line = now

    def finish(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _progress_line(e: p.ProgressEvent, width: int) -> str:
    parts = [f"{e.phase:<7}"]
    if e.total:
        filled = round(width * min(e.step, e.total) / e.total)
        parts.append(f"[{'#' * filled}{'-' * (width - filled)}] {e.step}/{e.total}")
    if e.clips:
        parts.append(f"clip {e.clip}/{e.clips}")
    if e.eta_s is not None:
        parts.append(f"ETA {_duration(e.eta_s)}")
    if e.message:
        parts.append(e.message[:60])
    return "  ".join(parts)


def _progress_text(job: p.JobInfo) -> str:
    e = job.progress
    if job.state == "queued" and job.queue_position:
        return f"#{job.queue_position} in queue"
    if e is None:
        return "-"
    text = f"{e.phase} {e.step}/{e.total}" if e.total else e.phase
    return text + (f" ETA {_duration(e.eta_s)}" if e.eta_s is not None else "")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n else "?"


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as e:
        raise UsageError(f"{path}: cannot write ({e.strerror or e})") from None


if __name__ == "__main__":
    sys.exit(main())
