"""How rank 0 steers the other ranks: commands and per-step agreement over a gloo group.

Why gloo (CPU) and not NCCL: an idle rank blocks in the command broadcast for as long as nobody
submits a job, and a blocked NCCL collective trips NCCL's watchdog; a gloo broadcast just waits.
Payloads are msgpack bytes in a uint8 tensor (length first, then the bytes) — never pickle, so
`broadcast_object_list` is not used. Rank 0 also sends an `idle` command every KEEPALIVE_S so a
peer that died is noticed while idle and no wait comes near the group timeout.

During a job every rank meets the others at each progress check with a status (`signal`); all
of them get the highest status any rank sent, so a stop from rank 0 and a failure on any rank
reach every rank at the same step. After a FAILED agreement the ranks exchange their error
messages (`gather_failures`).

On one process (world size 1) every method is local and free.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import msgpack
import torch
import torch.distributed as dist

from daemon.config import Settings
from shared.protocol import DeviceInfo

log = logging.getLogger(__name__)

KEEPALIVE_S = 60.0
# Longest a rank may wait inside one control collective: between two progress checks of a job.
CONTROL_TIMEOUT = timedelta(hours=2)
_DEVICE_INFO_BYTES = 1024

# Per-step statuses; the highest one any rank sends wins.
CONTINUE = 0    # keep going
STOP = 1        # rank 0: cancel or shutdown — every rank leaves the job now
END = 2         # this rank finished the job; with no failure anywhere, all go back to waiting
FAILED = 3      # this rank's part of the job raised: every rank abandons the job
MAX_FAILURE_CHARS = 1000
_FAILURE_BYTES = 4 * MAX_FAILURE_CHARS + 64     # a message in UTF-8 plus msgpack framing


@dataclass(frozen=True)
class RankFailure:
    """Why one rank's part of a job failed."""
    rank: int
    message: str


@dataclass(frozen=True)
class Command:
    kind: Literal["run", "idle", "shutdown"]
    job_id: str = ""
    mode: str = ""

    def to_bytes(self) -> bytes:
        return msgpack.packb({"kind": self.kind, "job_id": self.job_id, "mode": self.mode})

    @classmethod
    def from_bytes(cls, data: bytes) -> "Command":
        fields = msgpack.unpackb(data, raw=False, strict_map_key=True)
        return cls(kind=fields["kind"], job_id=fields["job_id"], mode=fields["mode"])


@dataclass(frozen=True)
class Runtime:
    """Where this rank runs."""
    rank: int
    world_size: int
    device: torch.device
    control: "Control"


class Control:
    def __init__(self, rank: int, world_size: int, group: dist.ProcessGroup | None):
        self.rank = rank
        self.world_size = world_size
        self.group = group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # -- commands
    def send_command(self, command: Command) -> None:
        """Rank 0: hand `command` to every other rank (they wait in receive_command)."""
        assert self.rank == 0
        if self.distributed:
            self._broadcast_bytes(command.to_bytes())

    def receive_command(self) -> Command:
        """Other ranks: block until rank 0 sends the next command."""
        assert self.rank != 0
        return Command.from_bytes(self._broadcast_bytes(None))

    # -- per-step agreement
    def signal(self, status: int = CONTINUE) -> int:
        """One tiny collective: every rank sends its status and returns the highest sent."""
        if not self.distributed:
            return status
        flag = torch.tensor([status], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return int(flag.item())

    def gather_failures(self, message: str | None) -> list[RankFailure]:
        """After a FAILED agreement, every rank calls this once with its error (None when it
        did not fail); every rank returns all failures in rank order."""
        mine = [RankFailure(self.rank, message[:MAX_FAILURE_CHARS])] if message is not None else []
        if not self.distributed:
            return mine
        packed = msgpack.packb(message[:MAX_FAILURE_CHARS] if message is not None else None)
        buf = torch.zeros(_FAILURE_BYTES, dtype=torch.uint8)
        buf[:len(packed)] = torch.frombuffer(bytearray(packed), dtype=torch.uint8)
        parts = [torch.zeros_like(buf) for _ in range(self.world_size)]
        dist.all_gather(parts, buf, group=self.group)
        failures = []
        for rank, part in enumerate(parts):
            text = _unpack_prefix(bytes(part.numpy()))
            if text is not None:
                failures.append(RankFailure(rank, text))
        return failures

    # -- startup
    def gather_devices(self, mine: DeviceInfo) -> list[DeviceInfo]:
        """Every rank's device, in rank order (all ranks call this once at startup)."""
        if not self.distributed:
            return [mine]
        packed = msgpack.packb([mine.rank, mine.name[:200], mine.memory_total, mine.memory_used])
        buf = torch.zeros(_DEVICE_INFO_BYTES, dtype=torch.uint8)
        buf[:len(packed)] = torch.frombuffer(bytearray(packed), dtype=torch.uint8)
        parts = [torch.zeros_like(buf) for _ in range(self.world_size)]
        dist.all_gather(parts, buf, group=self.group)
        devices = []
        for part in parts:
            rank, name, total, used = _unpack_prefix(bytes(part.numpy()))
            devices.append(DeviceInfo(rank=rank, name=name, memory_total=total, memory_used=used))
        return devices

    def _broadcast_bytes(self, payload: bytes | None) -> bytes:
        size = torch.tensor([len(payload) if self.rank == 0 else 0], dtype=torch.int64)
        dist.broadcast(size, src=0, group=self.group)
        if self.rank == 0:
            data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        else:
            data = torch.empty(int(size.item()), dtype=torch.uint8)
        dist.broadcast(data, src=0, group=self.group)
        return payload if self.rank == 0 else bytes(data.numpy())


def _unpack_prefix(data: bytes) -> list:
    """The first msgpack value of a zero-padded buffer."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    return next(unpacker)


def init_distributed(settings: Settings) -> Runtime:
    """Join the process group (when torchrun started several ranks) and pick this rank's device."""
    if torch.cuda.is_available():
        device = torch.device("cuda", settings.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if settings.world_size == 1:
        return Runtime(0, 1, device, Control(0, 1, None))
    if device.type == "cuda":
        dist.init_process_group(backend="nccl", rank=settings.rank, world_size=settings.world_size,
                                device_id=device)
    else:
        dist.init_process_group(backend="gloo", rank=settings.rank, world_size=settings.world_size)
    # A separate gloo group: control traffic never interleaves with the model's collectives.
    group = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return Runtime(settings.rank, settings.world_size, device,
                   Control(settings.rank, settings.world_size, group))


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def describe_device(rank: int, device: torch.device) -> DeviceInfo:
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return DeviceInfo(rank=rank, name=torch.cuda.get_device_name(device),
                          memory_total=int(total), memory_used=int(total - free))
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return DeviceInfo(rank=rank, name=f"cpu ({os.cpu_count()} cores)", memory_total=int(total),
                      memory_used=int(total - available))
