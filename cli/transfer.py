"""``creme export`` and ``creme import``: a running service's edits out as a merged model, delta files in as edits.

Both talk to the service through the Python client, with ``--url`` and ``--api-key`` as ``creme edits``
takes them. ``export --merged DIR`` downloads the deltas of the active edits (or of those named with
``--edit``), loads the configured base model here (``CREME_MODEL``, ``CREME_DTYPE``, ``CREME_DEVICE``),
checks that every delta was computed on it, applies them as the workers do and saves the result
with ``save_pretrained``: a plain ``AutoModelForCausalLM.from_pretrained(DIR)`` loads it.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cli.common import service_client, service_options
from creme.client import Client, CremeError

if TYPE_CHECKING:
    from service.engine.delta import EditDelta
    from service.settings import Settings

EXPORTABLE = ("computed", "applied", "reverted")
Command = Callable[[Client, argparse.Namespace, "Settings"], int]


class ExportRefused(Exception):
    """The export cannot be made as asked (named on stderr, exit code 1)."""


def _download(client: Client, args: argparse.Namespace) -> tuple[list[tuple[str, bytes]], dict[str, object]]:
    """The (edit id, delta bytes) to merge, in the service's order, and what the service's state says."""
    state = client.model()
    if args.edit:
        ids = list(dict.fromkeys(args.edit))
        for edit_id in ids:
            edit = client.edit_by_id(edit_id)
            if edit.status not in EXPORTABLE:
                raise ExportRefused(f"edit {edit_id} is {edit.status}; only computed, applied or reverted edits merge")
    else:
        ids = list(state.active_edits)
    about = {"base_model": state.base_model, "fingerprint": state.fingerprint, "state_version": state.state_version}
    return [(edit_id, client.delta(edit_id)) for edit_id in ids], about


def _parse(downloaded: list[tuple[str, bytes]], fingerprint: str, model: str) -> list[tuple[str, EditDelta]]:
    """Each delta parsed and checked to be for the model loaded here (fingerprint ``fingerprint``)."""
    from service.engine.delta import InvalidDeltaError, delta_from_bytes

    parsed = []
    for edit_id, data in downloaded:
        try:
            delta = delta_from_bytes(data)
        except InvalidDeltaError as exc:
            raise ExportRefused(f"edit {edit_id}: {exc}") from exc
        if delta.base_fingerprint != fingerprint:
            raise ExportRefused(
                f"edit {edit_id} was computed on base model {delta.base_fingerprint}, but the model loaded here "
                f"(CREME_MODEL={model!r}) has fingerprint {fingerprint}: set CREME_MODEL (and CREME_DTYPE) to the "
                "service's model"
            )
        parsed.append((edit_id, delta))
    return parsed


def cmd_export(client: Client, args: argparse.Namespace, settings: Settings) -> int:
    from cli.main import load_from_settings
    from service.engine.delta import InvalidDeltaError
    from service.engine.export import save_merged
    from service.engine.weights import WeightState

    target: Path = args.merged
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        print(f"creme export: {target} exists and is not an empty directory", file=sys.stderr)
        return 2
    downloaded, service_state = _download(client, args)
    lm = load_from_settings(settings)
    edits = _parse(downloaded, lm.fingerprint, settings.model)
    weights = WeightState(lm)
    try:
        weights.set_active(edits)
    except InvalidDeltaError as exc:
        raise ExportRefused(str(exc)) from exc
    record = {
        "service": args.service_url,
        "service_state": service_state,
        "base_model": settings.model,
        "base_fingerprint": lm.fingerprint,
        "dtype": settings.dtype,
        "edits": [{"id": edit_id, "sha256": hashlib.sha256(data).hexdigest()} for edit_id, data in downloaded],
        "weights_checksum": weights.checksum(),
    }
    files = save_merged(lm, target, record)
    merged = ", ".join(edit_id for edit_id, _ in edits) or "none (the base model as it is)"
    print(f"wrote {len(files)} files to {target}: {settings.model} with edits merged: {merged}")
    return 0


def cmd_import(client: Client, args: argparse.Namespace, settings: Settings) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"creme import: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    edit = client.import_delta(data)
    layers = ",".join(str(layer) for layer in edit.layers or [])
    print(f"{edit.id} {edit.status}; layers {layers}; method {edit.method}; from {args.file}")
    if args.apply:
        state = client.apply(edit.id)
        active = ", ".join(state.active_edits) or "none"
        print(f"{edit.id} {state.edit.status}; model state version {state.version}; active edits: {active}")
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    """``args.transfer`` with a client of ``--url``; a problem or refusal is one line on stderr, exit code 1."""
    try:
        with service_client(args, model=settings.model if args.command == "export" else None) as client:
            args.service_url = client.url
            return args.transfer(client, args, settings)
    except (CremeError, ExportRefused) as exc:
        print(f"creme {args.command}: {exc}", file=sys.stderr)
        return 1


def add_transfer_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``import`` to the subcommands ``sub``."""
    common = service_options()

    export = sub.add_parser(
        "export", parents=[common], help="write the service's base model with its active edits merged in"
    )
    export.add_argument(
        "--merged", type=Path, required=True, metavar="DIR", help="a new or empty directory for the model"
    )
    export.add_argument(
        "--edit", action="append", metavar="ID", help="merge this edit instead of the active ones (repeatable)"
    )
    export.set_defaults(func=_run, transfer=cmd_export)

    imported = sub.add_parser("import", parents=[common], help="store a delta file as a new edit of the service")
    imported.add_argument("file", type=Path, help="a delta file, as `GET /v1/edits/{id}/delta` serves it")
    imported.add_argument("--apply", action="store_true", help="apply the new edit too")
    imported.set_defaults(func=_run, transfer=cmd_import)
