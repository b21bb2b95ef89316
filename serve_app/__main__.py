"""Operator CLI: ``python -m serve_app keys create|list|revoke|webhook-secret``.

    python -m serve_app keys create alice --rate 2 --burst 10 --concurrency 4
    python -m serve_app keys list
    python -m serve_app keys revoke alice
    python -m serve_app keys webhook-secret alice   # needs SUPERRES_WEBHOOK_SECRET

The key file is ``--file``, else ``SUPERRES_API_KEYS_FILE``. ``create`` prints the new key alone on
stdout (``KEY=$(python -m serve_app keys create alice)``), the one time it is ever shown; the rest
goes to stderr. ``webhook-secret`` prints the secret that signs the webhooks of a key's jobs (what
the key's holder also gets from ``GET /v1/webhooks/secret``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from deployments.quota import QuotaLimits
from models.settings import Settings
from serve_app.keys import DEFAULT_LIMITS, KeyFileError, KeyNameError, create_key, read_keys
from serve_app.keys import revoke_key as revoke_key_in_file

ENV_FILE = "SUPERRES_API_KEYS_FILE"


class UsageError(Exception):
    pass


def _file(args: argparse.Namespace) -> Path:
    path = args.file or os.environ.get(ENV_FILE)
    if not path:
        raise UsageError(f"give --file PATH or set {ENV_FILE}")
    return Path(path)


def _limits_text(limits: QuotaLimits) -> str:
    return f"rate {limits.rate:g}/s, burst {limits.burst}, concurrency {limits.concurrency}"


def create(args: argparse.Namespace) -> int:
    path = _file(args)
    given = {k: getattr(args, k) for k in ("rate", "burst", "concurrency")}
    try:
        limits = QuotaLimits.model_validate(
            {**DEFAULT_LIMITS.model_dump(), **{k: v for k, v in given.items() if v is not None}}
        )
    except ValidationError as exc:
        raise UsageError(
            "; ".join(f"--{err['loc'][0]}: {err['msg']}" for err in exc.errors())
        ) from None
    created = create_key(path, args.name, limits)
    print(
        f"created key {args.name!r} ({_limits_text(limits)}) in {path}.\n"
        "The key is shown only this once; store it now:",
        file=sys.stderr,
    )
    print(created.key, flush=True)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    path = _file(args)
    records = read_keys(path)
    if not records:
        print(f"no keys in {path}", file=sys.stderr)
    for record in records:
        created = record.created_at.isoformat() if record.created_at else "-"
        print(f"{record.name}\t{_limits_text(record.limits)}\tcreated {created}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    path = _file(args)
    revoke_key_in_file(path, args.name)
    print(f"revoked key {args.name!r} in {path}", file=sys.stderr)
    return 0


def webhook_secret(args: argparse.Namespace) -> int:
    path = _file(args)
    found = [r for r in read_keys(path) if r.name == args.name]
    if not found:
        raise UsageError(f"no key named {args.name!r} in {path}")
    services = Settings().webhook_signers()
    if not services:
        raise UsageError("set SUPERRES_WEBHOOK_SECRET (the service's) to derive a key's")
    print(services[0].for_key(found[0].fingerprint).reveal(), flush=True)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m serve_app", description=__doc__.split("\n")[0])
    groups = root.add_subparsers(dest="group", required=True)
    keys = groups.add_parser("keys", help="API keys: create, list, revoke")
    commands = keys.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--file", type=Path, help=f"the key file (default: ${ENV_FILE})")
        return sub

    new = command("create", "create a key; prints it once")
    new.add_argument("name", help="a unique name: 1-64 letters, digits, '.', '_' or '-'")
    new.add_argument(
        "--rate", type=float, help=f"requests per second (default {DEFAULT_LIMITS.rate:g})"
    )
    new.add_argument(
        "--burst", type=int, help=f"requests at once after a pause (default {DEFAULT_LIMITS.burst})"
    )
    new.add_argument(
        "--concurrency",
        type=int,
        help=f"requests in progress at a time (default {DEFAULT_LIMITS.concurrency})",
    )
    new.set_defaults(run=create)
    command("list", "names and limits of the keys (never keys or hashes)").set_defaults(
        run=list_keys
    )
    gone = command("revoke", "remove a key; it stops working within seconds")
    gone.add_argument("name")
    gone.set_defaults(run=revoke)
    hook = command("webhook-secret", "the secret that signs the webhooks of a key's jobs")
    hook.add_argument("name")
    hook.set_defaults(run=webhook_secret)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (UsageError, KeyFileError, KeyNameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
