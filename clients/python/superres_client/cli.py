"""``superres``: upscale files, folders and URLs through a superres service (or ``--local``), and
look at its models, jobs and stats. ``--server`` / ``SUPERRES_URL``, ``--api-key`` /
``SUPERRES_API_KEY``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from superres_client import _common as c
from superres_client._display import Display
from superres_client._inputs import Task, collect
from superres_client.aio import AsyncClient
from superres_client.client import Client
from superres_client.errors import SuperresError
from superres_client.options import UpscaleOptions


@dataclass
class Outcome:
    input: str
    output: str
    status: str  # done, skipped, failed
    error: str | None = None
    seconds: float = 0.0
    width: int | None = None
    height: int | None = None

    @property
    def mp_per_s(self) -> float | None:
        if self.status != "done" or not self.width or not self.height or self.seconds <= 0:
            return None
        return self.width * self.height / 1e6 / self.seconds


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    partial.write_bytes(data)
    partial.replace(path)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SuperresError):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


async def _remote_one(
    client: AsyncClient, task: Task, options: dict[str, Any], display: Display
) -> Outcome:
    started = time.perf_counter()
    display.start(task.label)
    try:
        image: c.ImageInput = task.source
        job = await client.submit(image, "upscale", **options)
        result = await job.wait(
            progress=lambda done, total: display.progress(task.label, done, total), timeout=None
        )
        _write(task.output, await result.aread())
    except (SuperresError, OSError) as exc:
        outcome = Outcome(task.label, str(task.output), "failed", _reason(exc))
    else:
        outcome = Outcome(
            task.label, str(task.output), "done", None, 0.0, result.width, result.height
        )
    outcome.seconds = time.perf_counter() - started
    display.end(task.label, outcome.status, outcome.error or f"-> {task.output}")
    return outcome


async def _remote(
    args: argparse.Namespace, tasks: list[Task], options: dict[str, Any], display: Display
) -> list[Outcome]:
    gate = asyncio.Semaphore(max(1, args.concurrency))

    async def one(client: AsyncClient, task: Task) -> Outcome:
        async with gate:
            return await _remote_one(client, task, options, display)

    async with AsyncClient(args.server, args.api_key, timeout=args.timeout) as client:
        return list(await asyncio.gather(*(one(client, t) for t in tasks)))


def _local(
    args: argparse.Namespace, tasks: list[Task], options: dict[str, Any], display: Display
) -> list[Outcome]:
    try:
        from superres_client._local import LocalUpscaler  # torch: only now
    except ModuleNotFoundError as exc:
        if exc.name not in {"models", "torch", "spandrel"}:
            raise
        raise SuperresError(
            f"--local runs the models in this process and needs the service's distribution "
            f"(missing: {exc.name}): pip install superres, or use --server",
            code="unsupported",
        ) from exc

    if options.get("face_enhance"):
        raise SuperresError("--face-enhance needs a server", code="unsupported")
    upscaler = LocalUpscaler(args.model, args.custom_model, args.weights_dir, args.backend)
    parsed = UpscaleOptions.model_validate(options)
    outcomes = []
    for task in tasks:
        display.start(task.label)
        started = time.perf_counter()
        try:
            if task.is_url:
                raise SuperresError("URLs need a server", code="unsupported")
            done = upscaler.upscale(Path(task.source).read_bytes(), parsed)
            _write(task.output, done.data)
            outcome = Outcome(
                task.label, str(task.output), "done", None, 0.0, done.width, done.height
            )
        except Exception as exc:  # a model error of this image: reported, the others go on
            outcome = Outcome(task.label, str(task.output), "failed", _reason(exc))
        outcome.seconds = time.perf_counter() - started
        display.end(task.label, outcome.status, outcome.error or f"-> {task.output}")
        outcomes.append(outcome)
    return outcomes


def _summary(outcomes: list[Outcome], elapsed: float) -> str:
    rows = [("input", "status", "time", "MP/s", "output / reason")]
    for o in outcomes:
        rate = o.mp_per_s
        rows.append(
            (
                o.input,
                o.status,
                f"{o.seconds:.2f} s" if o.status != "skipped" else "-",
                f"{rate:.3g}" if rate is not None else "-",
                o.error or o.output,
            )
        )
    widths = [min(max(len(r[i]) for r in rows), 50) for i in range(4)]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in rows
    ]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    lines.append(
        f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
        f"in {elapsed:.1f} s"
    )
    return "\n".join(lines)


def cmd_upscale(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        k: v
        for k, v in {
            "model": None if args.local else args.model,
            "scale": args.scale,
            "format": args.format,
            "quality": args.quality,
            "denoise": args.denoise,
        }.items()
        if v is not None
    }
    if args.face_enhance:
        options["face_enhance"] = True
    c.checked_options("upscale", options)  # a bad option stops the run before anything is sent
    tasks = collect(args.inputs, args.output_dir, args.glob, args.format)
    todo = [t for t in tasks if args.overwrite or not t.output.exists()]
    skipped = [Outcome(t.label, str(t.output), "skipped") for t in tasks if t not in todo]
    display = Display(len(todo), sys.stderr, live=sys.stderr.isatty() and not args.json)
    started = time.perf_counter()
    try:
        if args.local:
            done = _local(args, todo, options, display)
        else:
            done = asyncio.run(_remote(args, todo, options, display)) if todo else []
    finally:
        display.close()
    elapsed = time.perf_counter() - started
    outcomes = skipped + done
    if args.json:
        report = [{**asdict(o), "mp_per_s": o.mp_per_s} for o in outcomes]
        print(json.dumps({"results": report, "seconds": elapsed}, indent=2))
    else:
        print(_summary(outcomes, elapsed))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _print(value: Any, as_json: bool, table: Sequence[tuple[str, ...]] | None = None) -> None:
    if as_json or table is None:
        print(json.dumps(value, indent=2, default=str))
        return
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def cmd_models(args: argparse.Namespace) -> int:
    with Client(args.server, args.api_key, timeout=args.timeout) as client:
        models = client.models()
    table = [("name", "kind", "scale", "ready", "status")]
    table += [
        (m["name"], m["kind"], str(m.get("scale") or "-"), str(m["ready"]), m.get("status", ""))
        for m in models
    ]
    _print(models, args.json, table)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with Client(args.server, args.api_key, timeout=args.timeout) as client:
        jobs = client.jobs("active" if args.active else "all")
    views = [j.view.model_dump(mode="json") for j in jobs]
    table = [("id", "status", "operation", "created", "progress")]
    for j in jobs:
        p = j.view.progress
        table.append(
            (
                j.id,
                j.view.status,
                j.view.operation,
                str(j.view.created_at or "")[:19],
                f"{p.done}/{p.total}" if p else "",
            )
        )
    _print(views, args.json, table)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with Client(args.server, args.api_key, timeout=args.timeout) as client:
        _print(client.stats(), True)
    return 0


def _described(option: str) -> str | None:
    """The option's help: its description in the options model the server validates with."""
    return UpscaleOptions.model_fields[option].description


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="superres", description=(__doc__ or "").replace("``", ""))
    p.add_argument("--server", default=None, help="default: $SUPERRES_URL or " + c.DEFAULT_URL)
    p.add_argument("--api-key", default=None, help="default: $SUPERRES_API_KEY")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale files, folders (recursively) and URLs")
    up.add_argument("inputs", nargs="+", metavar="IN")
    up.add_argument("-o", "--output-dir", type=Path, required=True)
    up.add_argument("--glob", default=None, help="files of folders to take, e.g. '*.png'")
    for name, kind in (("model", str), ("scale", float), ("quality", int), ("denoise", float)):
        up.add_argument(f"--{name}", type=kind, default=None, help=_described(name))
    up.add_argument(
        "--format", choices=("png", "jpeg", "webp"), default=None, help=_described("format")
    )
    up.add_argument("--face-enhance", action="store_true", help=_described("face_enhance"))
    up.add_argument("--concurrency", type=int, default=4, help="jobs in flight (default 4)")
    up.add_argument("--overwrite", action="store_true", help="redo outputs that exist")
    up.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    up.add_argument("--local", action="store_true", help="run models/ here, no server")
    up.add_argument(
        "--custom-model",
        action="append",
        default=[],
        metavar="NAME=PATH@SHA256",
        help="--local: a spandrel model file, pinned by sha256",
    )
    up.add_argument("--weights-dir", type=Path, default=None, help="--local: weights cache")
    up.add_argument("--backend", default="auto", help="--local: auto, torch or openvino")
    up.set_defaults(func=cmd_upscale)

    models = sub.add_parser("models", help="the service's models")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)
    jobs = sub.add_parser("jobs", help="jobs (all, or --active)")
    jobs.add_argument("--active", action="store_true")
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=cmd_jobs)
    stats = sub.add_parser("stats", help="the service's stats (JSON)")
    stats.set_defaults(func=cmd_stats)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (SuperresError, FileNotFoundError) as exc:
        print(f"superres: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
