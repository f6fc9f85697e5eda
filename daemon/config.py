"""The daemon's command-line flags, parsed and checked once into one frozen `Settings`.

Flag names of the official MultiTalk scripts are kept (`--ulysses_size`, `--t5_fsdp`,
`--offload_model True`, …) so their users feel at home; ours use dashes. This is also the one
place that reads the environment: torchrun's RANK / WORLD_SIZE / LOCAL_RANK, and
DUET_INJECT_FAULT (tests only: makes the daemon fail on purpose, see FAULTS).
"""
from __future__ import annotations

import argparse
import ipaddress
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from shared.protocol import DEFAULT_PORT, MAX_FRAME_BYTES

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_VERSION = "0.1.0"
BACKEND_CHOICES = ("auto", "draft", "multitalk")
RANDOM_SIZES = ("full", "tiny")             # --random_weights: daemon.pipeline.models.RandomSizes
# DUET_INJECT_FAULT values, for the reliability tests (docs/reliability.md): a failure that
# cannot be provoked for real on the test machine.
FAULTS = {
    "gpu-oom": "the first render after start raises torch.OutOfMemoryError at its first "
               "progress check, as a GPU that ran out of memory would",
    "follower-error": "on every rank but 0, the first job after start raises a RuntimeError at "
                      "its first progress check, as a follower rank's failing step would",
}
FAULT_ENV = "DUET_INJECT_FAULT"
# A sampling step has at most 3 guidance passes (cond, drop-text, uncond): more CFG-parallel
# groups would idle (daemon.parallel.groups.MAX_GUIDANCE_DEGREE; not imported: torch).
MAX_CFG_PARALLEL = 3
SERVER_SECRET_KEY = "server.key_secret"      # zmq.auth certificate layout inside --curve-dir
AUTHORIZED_CLIENTS = "authorized_clients"


class ConfigError(ValueError):
    """A flag value or combination the daemon cannot run with; the message says the fix."""


@dataclass(frozen=True)
class LoraFile:
    """One --lora flag: a LoRA merged into the DiT at load, ΔW scaled by `scale`."""
    path: Path           # absolute; a relative flag value is resolved under --weights
    scale: float = 1.0


@dataclass(frozen=True)
class Settings:
    # Parallelism and model options (official names).
    ulysses_size: int = 1
    ring_size: int = 1
    t5_fsdp: bool = False
    dit_fsdp: bool = False
    frame_num: int = 81
    sample_shift: float | None = None
    offload_model: bool = True
    num_persistent_param_in_dit: int | None = None
    cfg_parallel: int = 1               # guidance passes over this many rank groups (1 = none)
    loras: tuple[LoraFile, ...] = ()
    fp8: bool = False                   # the DiT's token-wide GEMMs in float8 (changes the output)
    random_weights: str | None = None   # "full" | "tiny": random models, no weight files (benchmarks)
    # Service.
    server_port: int = DEFAULT_PORT
    bind: str = "127.0.0.1"
    insecure: bool = False
    require_curve: bool = False
    curve_dir: Path | None = None
    weights: Path = REPO_ROOT / "weights"
    state: Path = REPO_ROOT / "state"
    backend: str = "auto"
    max_request_bytes: int = MAX_FRAME_BYTES
    max_queued: int = 100
    log_level: str = "INFO"
    inject_fault: str | None = None     # one of FAULTS (tests only), from DUET_INJECT_FAULT
    # From torchrun.
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def address(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"tcp://{host}:{self.server_port}"

    @property
    def curve(self) -> bool:
        """Clients must present an authorized CURVE key (and traffic is encrypted)."""
        return self.require_curve or (not self.insecure and not is_loopback(self.bind))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False    # "*", "0.0.0.0"-like names and interface names reach other machines


def _str2bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "y"):
        return True
    if value in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (use True or False)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m daemon",
        description="Duet Studio inference daemon: serves the msgpack/ZeroMQ protocol "
                    "(docs/protocol.md). Start it with ./run_daemon.sh, which runs one rank per "
                    "visible GPU under torchrun.")
    g = p.add_argument_group("model and parallelism (names as in the official MultiTalk scripts)")
    g.add_argument("--ulysses_size", type=int, default=1,
                   help="Ulysses sequence-parallel degree; cfg_parallel × ulysses_size × "
                        "ring_size = number of ranks")
    g.add_argument("--ring_size", type=int, default=1, help="ring-attention sequence-parallel degree")
    g.add_argument("--t5_fsdp", action="store_true", help="shard the T5 encoder over the ranks")
    g.add_argument("--dit_fsdp", action="store_true", help="shard the DiT over the ranks")
    g.add_argument("--frame_num", type=int, default=81,
                   help="frames per clip for full renders, 4n+1 (default 81)")
    g.add_argument("--sample_shift", type=float, default=None,
                   help="flow shift for full renders (default: 7 at 480p, 11 at 720p)")
    g.add_argument("--offload_model", type=_str2bool, default=None, metavar="True|False",
                   help="move models to the CPU between phases (default: True on one rank, "
                        "False on several)")
    g.add_argument("--num_persistent_param_in_dit", type=int, default=None,
                   help="DiT parameters kept on the GPU when offloading (low-VRAM mode)")
    g.add_argument("--cfg_parallel", type=int, default=1, metavar="N",
                   help=f"run a step's guidance passes on N groups of ranks at once (1–"
                        f"{MAX_CFG_PARALLEL}); ranks = cfg_parallel × ulysses_size × ring_size "
                        f"(default 1: no CFG parallelism, see docs/parallel.md)")
    g.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="merge a LoRA into the DiT at load (repeatable; scale default 1.0); a "
                        "relative FILE is looked up under --weights, e.g. loras/NAME.safetensors "
                        "(weights/download.sh lora)")
    g.add_argument("--fp8", action="store_true",
                   help="run the DiT's token-wide GEMMs in float8 on GPUs with FP8 tensor cores "
                        "(Ada/Hopper): faster, lighter, slightly different output "
                        "(docs/performance.md)")
    g.add_argument("--random_weights", choices=RANDOM_SIZES, default=None,
                   help="serve full renders from RANDOMLY initialised models of the released "
                        "sizes (full) or tiny ones, reading no weight files: renders are noise; "
                        "for measuring speed and memory without the downloads")
    s = p.add_argument_group("service")
    s.add_argument("--server_port", type=int, default=DEFAULT_PORT,
                   help=f"ZeroMQ port (default {DEFAULT_PORT}; the studio's web page is on 8419)")
    s.add_argument("--bind", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1); any other address requires "
                        "CURVE keys (--curve-dir) unless --insecure")
    s.add_argument("--curve-dir", type=Path, default=None,
                   help=f"folder with {SERVER_SECRET_KEY} and {AUTHORIZED_CLIENTS}/*.key "
                        "(create one with --make-curve-keys DIR)")
    s.add_argument("--require-curve", action="store_true",
                   help="require CURVE keys even on a loopback address")
    s.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback bind WITHOUT authentication or encryption")
    s.add_argument("--weights", type=Path, default=REPO_ROOT / "weights",
                   help="model weights folder (default: the repo's weights/)")
    s.add_argument("--state", type=Path, default=REPO_ROOT / "state",
                   help="job store, results and caches (default: the repo's state/)")
    s.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                   help="auto: multitalk when its weights are present (full renders), draft "
                        "always; draft: never load the big model")
    s.add_argument("--max-request-mb", type=float, default=None,
                   help=f"refuse requests larger than this (default and maximum "
                        f"{MAX_FRAME_BYTES / 2**20:.0f} MB, the protocol limit)")
    s.add_argument("--max-queued", type=int, default=100,
                   help="queued jobs accepted before submit answers busy (default 100)")
    s.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    s.add_argument("--make-curve-keys", type=Path, default=None, metavar="DIR",
                   help="write a server key pair and one authorized client key pair to DIR, "
                        "then exit")
    return p


def parse_settings(argv: Sequence[str] | None = None,
                   env: Mapping[str, str] | None = None) -> Settings:
    """Flags + torchrun's environment → checked Settings. Raises ConfigError."""
    return settings_from_args(build_parser().parse_args(argv), env)


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    rank, local_rank, world_size = (_env_int(env, "RANK", 0), _env_int(env, "LOCAL_RANK", 0),
                                    _env_int(env, "WORLD_SIZE", 1))
    offload = args.offload_model if args.offload_model is not None else world_size == 1
    max_request = MAX_FRAME_BYTES if args.max_request_mb is None else int(args.max_request_mb * 2**20)
    weights = args.weights.resolve()
    settings = Settings(
        ulysses_size=args.ulysses_size, ring_size=args.ring_size, t5_fsdp=args.t5_fsdp,
        dit_fsdp=args.dit_fsdp, frame_num=args.frame_num, sample_shift=args.sample_shift,
        offload_model=offload, num_persistent_param_in_dit=args.num_persistent_param_in_dit,
        cfg_parallel=args.cfg_parallel,
        loras=tuple(parse_lora(text, weights) for text in args.lora),
        fp8=args.fp8, random_weights=args.random_weights,
        server_port=args.server_port, bind=args.bind, insecure=args.insecure,
        require_curve=args.require_curve, curve_dir=args.curve_dir,
        weights=weights, state=args.state.resolve(), backend=args.backend,
        max_request_bytes=max_request, max_queued=args.max_queued, log_level=args.log_level,
        inject_fault=env.get(FAULT_ENV) or None, rank=rank, local_rank=local_rank,
        world_size=world_size)
    check_settings(settings)
    return settings


def parse_lora(text: str, weights: Path) -> LoraFile:
    """`FILE` or `FILE:SCALE` → LoraFile; a relative FILE is taken under `weights`."""
    name, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep:
        try:
            name, scale = head, float(tail)
        except ValueError:
            pass                            # a colon inside the file name, no scale
    if not name:
        raise ConfigError(f"--lora {text!r}: give a file, e.g. --lora loras/NAME.safetensors:0.8")
    if not math.isfinite(scale):
        raise ConfigError(f"--lora {text!r}: the scale must be a finite number, e.g. 0.8")
    path = Path(name).expanduser()
    return LoraFile(path if path.is_absolute() else weights / path, scale)


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer "
                          "(it is set by torchrun)") from None


def check_settings(s: Settings) -> None:
    """Every rule a combination of flags must follow, each failure saying what to change."""
    if s.world_size < 1 or not 0 <= s.rank < s.world_size:
        raise ConfigError(f"RANK={s.rank} / WORLD_SIZE={s.world_size} are inconsistent")
    if s.ulysses_size < 1 or s.ring_size < 1:
        raise ConfigError("--ulysses_size and --ring_size must be at least 1")
    if not 1 <= s.cfg_parallel <= MAX_CFG_PARALLEL:
        raise ConfigError(f"--cfg_parallel {s.cfg_parallel} must be 1 to {MAX_CFG_PARALLEL}: a step "
                          f"has at most {MAX_CFG_PARALLEL} guidance passes to spread")
    ranks = s.cfg_parallel * s.ulysses_size * s.ring_size
    if ranks != s.world_size:
        cfg = f"--cfg_parallel {s.cfg_parallel} × " if s.cfg_parallel > 1 else ""
        fix = (f"--ulysses_size {s.world_size // s.cfg_parallel} --ring_size 1"
               if s.world_size % s.cfg_parallel == 0 else f"--cfg_parallel 1 --ulysses_size {s.world_size}")
        raise ConfigError(
            f"{cfg}--ulysses_size {s.ulysses_size} × --ring_size {s.ring_size} = {ranks}, but the "
            f"daemon runs {s.world_size} rank(s): they must be equal. Start {ranks} ranks "
            f"(./run_daemon.sh --nproc {ranks}) or set {fix}")
    if (s.t5_fsdp or s.dit_fsdp) and s.world_size == 1:
        raise ConfigError("--t5_fsdp/--dit_fsdp shard over several ranks; with one rank, drop them")
    if s.frame_num < 5 or s.frame_num % 4 != 1:
        raise ConfigError(f"--frame_num {s.frame_num} must be 4n+1 (e.g. 81): the video VAE "
                          "packs 4 frames per latent after the first")
    if s.sample_shift is not None and not s.sample_shift > 0:
        raise ConfigError(f"--sample_shift {s.sample_shift} must be positive")
    if s.num_persistent_param_in_dit is not None and s.num_persistent_param_in_dit < 0:
        raise ConfigError("--num_persistent_param_in_dit must be 0 or more")
    if s.fp8 and s.dit_fsdp:
        raise ConfigError("--fp8 does not combine with --dit_fsdp yet (the float8 weights are made "
                          "from whole ones): drop one of them")
    if s.random_weights and (s.loras or s.dit_fsdp or s.t5_fsdp):
        raise ConfigError("--random_weights builds whole random models: drop --lora, --dit_fsdp "
                          "and --t5_fsdp (they read the weight files)")
    if s.random_weights and s.backend == "draft":
        raise ConfigError("--random_weights is for full renders: drop --backend draft")
    if s.loras and s.dit_fsdp:
        raise ConfigError("--lora cannot be merged into a DiT sharded with --dit_fsdp yet (the merge "
                          "needs whole weights): drop one of them")
    for lora in s.loras:
        if not lora.path.is_file():
            raise ConfigError(f"--lora: {lora.path} not found — download the LoRAs with "
                              f"`weights/download.sh lora` (they go to {s.weights / 'loras'}), or "
                              f"give the file's path")
    if not 1 <= s.server_port <= 65535:
        raise ConfigError(f"--server_port {s.server_port} is not a TCP port (1–65535)")
    if not 1024 <= s.max_request_bytes <= MAX_FRAME_BYTES:
        raise ConfigError(f"--max-request-mb must be between 0.001 and {MAX_FRAME_BYTES / 2**20:.0f}")
    if s.max_queued < 1:
        raise ConfigError("--max-queued must be at least 1")
    if s.inject_fault is not None and s.inject_fault not in FAULTS:
        raise ConfigError(f"{FAULT_ENV}={s.inject_fault!r} is not a fault the daemon can inject "
                          f"({', '.join(FAULTS)}); unset it for normal use")
    if s.insecure and s.require_curve:
        raise ConfigError("--insecure and --require-curve contradict each other; pick one")
    if s.curve:
        if s.curve_dir is None:
            raise ConfigError(
                f"--bind {s.bind} lets other machines connect, so clients must authenticate: pass "
                f"--curve-dir DIR (make one with `python -m daemon --make-curve-keys DIR`), or "
                f"--insecure to serve without authentication, or --bind 127.0.0.1")
        if not (s.curve_dir / SERVER_SECRET_KEY).is_file():
            raise ConfigError(f"{s.curve_dir / SERVER_SECRET_KEY} is missing; create keys with "
                              f"`python -m daemon --make-curve-keys {s.curve_dir}`")
        if not (s.curve_dir / AUTHORIZED_CLIENTS).is_dir():
            raise ConfigError(f"{s.curve_dir / AUTHORIZED_CLIENTS}/ is missing: put the public "
                              "keys (*.key) of the clients you allow there")
