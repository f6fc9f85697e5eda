"""`python -m daemon [flags]` — one rank of the Duet Studio daemon (torchrun starts several).

Every rank loads what it needs once and stays resident. Rank 0 owns the job store, the TTS and
the socket (daemon.server); all ranks run the job loop (daemon.worker). Exit codes: 0 after a
clean stop (SIGTERM / Ctrl-C), 1 after a fatal error, 2 for bad flags or a port in use.
"""
from __future__ import annotations

import logging
import signal
import sys
from typing import TYPE_CHECKING, Sequence

from daemon.config import ConfigError, Settings, build_parser, settings_from_args

if TYPE_CHECKING:
    from daemon.control import Runtime
    from daemon.jobs import JobBoard

log = logging.getLogger("daemon")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.make_curve_keys is not None:
        from daemon.keys import make_curve_keys
        try:
            written = make_curve_keys(args.make_curve_keys)
        except FileExistsError as e:
            print(f"python -m daemon: error: {e}", file=sys.stderr)
            return 2
        print("\n".join(str(path) for path in written))
        print(f"start the daemon with --curve-dir {args.make_curve_keys}; give clients "
              f"server.key and client.key_secret (studio.cli --curve-dir)")
        return 0
    try:
        settings = settings_from_args(args)
    except ConfigError as e:
        print(f"python -m daemon: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format=f"%(asctime)s rank{settings.rank} %(levelname)s %(name)s: %(message)s")
    # Imported only now, so --help, --make-curve-keys and flag errors answer at once.
    from daemon.control import init_distributed, shutdown_distributed
    runtime = init_distributed(settings)
    try:
        if runtime.rank == 0:
            return _lead(settings, runtime)
        return _follow(settings, runtime)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    finally:
        shutdown_distributed()


def _follow(settings: Settings, runtime: Runtime) -> int:
    # torchrun and a terminal's Ctrl-C signal every rank; rank 0 alone decides when to stop
    # (it finishes or requeues the job, then sends every rank the shutdown command). A rank 0
    # that dies abruptly breaks the gloo connection, which ends the others too.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from daemon.backends import select_backends
    from daemon.control import describe_device
    from daemon.jobs import JobFiles
    from daemon.worker import Worker

    backends = select_backends(settings, runtime, tts=None)
    runtime.control.gather_devices(describe_device(runtime.rank, runtime.device))
    Worker(runtime.control, backends, JobFiles(settings.state), settings=settings,
           device=runtime.device).run()
    return 0


def _lead(settings: Settings, runtime: Runtime) -> int:
    from daemon.backends import select_backends
    from daemon.control import Command, describe_device
    from daemon.jobs import JobBoard, JobFiles, JobStore
    from daemon.server import Server, ServerError
    from daemon.service import Service
    from daemon.tts import TTS
    from daemon.worker import Worker
    from shared.protocol import JobChangedEvent

    store = JobStore(settings.state)
    recovery = store.recover()
    if recovery.requeued or recovery.failed or recovery.cancelled or recovery.removed_orphans:
        log.info("recovered the job store: requeued %s, failed %s, cancelled %s, removed %s",
                 recovery.requeued, recovery.failed, recovery.cancelled, recovery.removed_orphans)
    tts = TTS(settings.weights, settings.state / "tts-cache", device=runtime.device)
    tts.preload()
    backends = select_backends(settings, runtime, tts)
    other_devices = runtime.control.gather_devices(describe_device(0, runtime.device))[1:]
    board = JobBoard()

    def devices():
        return [describe_device(0, runtime.device), *other_devices]

    server: Server | None = None

    def publish(event) -> None:
        server.publish(event)

    service = Service(settings, store, board, backends, tts, devices, publish)
    server = Server(settings, service, on_failure=board.request_stop)
    worker = Worker(runtime.control, backends, JobFiles(settings.state), store=store, board=board,
                    publish=publish,
                    announce=lambda record: publish(JobChangedEvent(job=service.job_info(record))),
                    settings=settings, device=runtime.device)
    try:
        server.start()
    except ServerError as e:
        log.error("%s", e)
        runtime.control.send_command(Command("shutdown"))
        return 2
    _stop_on_signals(board)
    log.info("serving %s on %s (%d rank%s, backends: %s)", "CURVE-secured" if settings.curve
             else "plain", settings.address, settings.world_size, "s" if settings.world_size > 1
             else "", ", ".join(f"{b.name}={b.state}" for b in backends.states()))
    try:
        worker.run()
    except BaseException as e:
        log.exception("fatal error")
        server.stop(f"the daemon died ({type(e).__name__}: {e}); restart it with ./run_daemon.sh "
                    "— queued and interrupted jobs resume")
        return 1
    server.stop("the daemon was stopped; queued and interrupted jobs resume when it starts again")
    store.close()
    log.info("stopped")
    return 1 if server.failed else 0


def _stop_on_signals(board: JobBoard) -> None:
    """First SIGTERM/SIGINT: stop cleanly (the running job is queued again). Second: exit now."""
    def handler(signum, frame):
        log.info("%s: stopping (again to exit at once)", signal.Signals(signum).name)
        board.request_stop()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


if __name__ == "__main__":
    sys.exit(main())
