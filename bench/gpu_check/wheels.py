"""Wheels for the GPU machine, packed into carry-sized folders, and put back together there.

The device tool carries at most 64 MiB per call (the working tree included) and the
onnxruntime-gpu wheel alone is 256 MB, so (docs/gpu-check.md):
- here, `pack` fills folders `.gpu/part1`, `.gpu/part2`, ... of at most `--folder-bytes`
  each: the other wheels first (first fit), then consecutive slices of the big wheel in
  whatever room is left; `.gpu/plan.json` records the slices and the wheel's sha256;
- there, each call copies its carried folder into a stash (`stash`), and the last one
  reassembles the wheel, checking its size and sha256, before installing (`join`).
Standard library only: it runs before anything is installed.

    python -m bench.gpu_check.wheels pack .gpu/download .gpu
    python -m bench.gpu_check.wheels stash .gpu /tmp/audioserve-gpu
    python -m bench.gpu_check.wheels join /tmp/audioserve-gpu
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

BIG = "onnxruntime_gpu-"
FOLDER_BYTES = 58_000_000
"""Per carried folder: 64 MiB (67.1 MB) less the ~3 MB working tree and a margin."""
PLAN = "plan.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(download: Path, root: Path, folder_bytes: int = FOLDER_BYTES) -> dict[str, object]:
    """Fill `root/part<i>` folders from the wheels in `download` (see the module note)."""
    wheels = sorted(download.glob("*.whl"))
    big = [w for w in wheels if w.name.startswith(BIG)]
    if len(big) != 1:
        raise SystemExit(f"expected one {BIG}*.whl in {download}, found {len(big)}")
    small = sorted((w for w in wheels if w not in big), key=lambda w: -w.stat().st_size)
    if any(w.stat().st_size > folder_bytes for w in small):
        raise SystemExit(f"a wheel in {download} is larger than {folder_bytes} bytes")
    for old in root.glob("part*"):
        shutil.rmtree(old)
    folders: list[list[Path]] = []
    room: list[int] = []
    for wheel in small:  # first fit, largest first
        size = wheel.stat().st_size
        slot = next((i for i, r in enumerate(room) if r >= size), None)
        if slot is None:
            folders.append([])
            room.append(folder_bytes)
            slot = len(folders) - 1
        folders[slot].append(wheel)
        room[slot] -= size
    whole = big[0].read_bytes()
    slices: list[dict[str, object]] = []
    offset, index = 0, 0
    while offset < len(whole):
        if index == len(folders):
            folders.append([])
            room.append(folder_bytes)
        take = min(room[index], len(whole) - offset)
        if take > 0:
            name = f"{big[0].name}.part{len(slices) + 1:02d}"
            slices.append({"folder": f"part{index + 1}", "file": name, "offset": offset,
                           "bytes": take})
            room[index] -= take
            offset += take
        index += 1
    plan = {"wheel": big[0].name, "bytes": len(whole), "sha256": sha256(big[0]),
            "slices": slices, "folders": [f"part{i + 1}" for i in range(len(folders))]}
    for i, wheels_in in enumerate(folders):
        folder = root / f"part{i + 1}"
        folder.mkdir(parents=True)
        for wheel in wheels_in:
            shutil.copy2(wheel, folder / wheel.name)
        (folder / PLAN).write_text(json.dumps(plan, indent=1) + "\n")
    for s in slices:
        start, size = int(str(s["offset"])), int(str(s["bytes"]))
        (root / str(s["folder"]) / str(s["file"])).write_bytes(whole[start:start + size])
    (root / PLAN).write_text(json.dumps(plan, indent=1) + "\n")
    return plan


def stash(root: Path, store: Path) -> list[str]:
    """Copy whatever part folders this call carried into `store` (kept across calls while
    the machine stays warm)."""
    store.mkdir(parents=True, exist_ok=True)
    copied = []
    for folder in sorted(root.glob("part*")):
        for item in folder.iterdir():
            shutil.copy2(item, store / item.name)
            copied.append(item.name)
    return copied


def join(store: Path) -> Path:
    """Reassemble the big wheel in `store` from its slices; raises naming what is missing
    or corrupt. Returns the wheel's path."""
    plan_path = store / PLAN
    if not plan_path.is_file():
        raise SystemExit(f"{plan_path} missing: no part folder was stashed")
    plan = json.loads(plan_path.read_text())
    missing = [s["file"] for s in plan["slices"] if not (store / s["file"]).is_file()]
    if missing:
        carried = sorted({s["folder"] for s in plan["slices"] if s["file"] in missing})
        raise SystemExit(f"slices {missing} missing: carry {carried} (one call each) first")
    wheel = store / plan["wheel"]
    with wheel.open("wb") as out:
        for s in plan["slices"]:
            out.write((store / s["file"]).read_bytes())
    if wheel.stat().st_size != plan["bytes"] or sha256(wheel) != plan["sha256"]:
        raise SystemExit(f"{wheel.name}: reassembled wheel does not match its sha256")
    for s in plan["slices"]:
        (store / s["file"]).unlink()
    return wheel


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check.wheels")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("download", type=Path)
    a.add_argument("root", type=Path)
    a.add_argument("--folder-bytes", type=int, default=FOLDER_BYTES)
    b = sub.add_parser("stash")
    b.add_argument("root", type=Path)
    b.add_argument("store", type=Path)
    c = sub.add_parser("join")
    c.add_argument("store", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        plan = pack(args.download, args.root, args.folder_bytes)
        for folder in list(plan["folders"]):  # type: ignore[call-overload]
            size = sum(f.stat().st_size for f in (args.root / folder).iterdir())
            print(f"{args.root / folder}: {size / 1e6:.1f} MB")
    elif args.cmd == "stash":
        print(f"stashed {len(stash(args.root, args.store))} files in {args.store}")
    else:
        print(f"reassembled {join(args.store)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
