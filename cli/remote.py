"""``creme edits ...`` and ``creme patch``: the command line of a running service, over the Python client.

Every command takes ``--url`` (default ``$CREME_URL``, else http://127.0.0.1:8000), ``--api-key``
(default ``$CREME_API_KEY``) and ``--model`` (the base model, once the service serves several). A
problem the service answers with, or an unreachable service, is one line on stderr,
``creme <command>: <status> <title>: <detail>``, and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from cli.common import first_line, fmt_p, parse_layers, service_client, service_options, set_table
from creme.client import Client, CremeError, Edit, Job, WaitTimeout
from service.db.models import EDIT_STATUSES
from service.engine.options import APPLY_POLICIES, METHODS

POLL_SECONDS = 0.5
PATCH_WAIT = 300.0
PROMPT_WIDTH = 56

RemoteCommand = Callable[[Client, argparse.Namespace], int]


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1, not {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds ≥ 0, not {text!r}")
    return value


def _stamp(value: datetime | None) -> str:
    """A time in UTC to the second, or '-'."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _band(layers: Sequence[int] | None) -> str:
    """[10, 11, 12] → '10-12'; a band with gaps as a list."""
    if not layers:
        return "default"
    if list(layers) == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(str(layer) for layer in layers)


def _short(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def describe(edit: Edit, job: Job | None = None) -> list[str]:
    """Lines of a readable view of ``edit`` (with ``job``, the job that computed it, when at hand)."""
    inferred = {name for name, flag in (edit.inferred or {}).items() if flag}

    def value(name: str) -> str:
        text = getattr(edit, name)
        if text is None:
            return "(to be read from the model)"
        return f"{text}  (read from the model)" if name in inferred else text

    lines = [
        f"edit      {edit.id}",
        f"status    {edit.status}",
        f"prompt    {edit.prompt}",
        f"hop 1     {edit.hop1_phrase}",
        f"bridge    {value('bridge')}",
        f"answer    {value('answer')}",
        f"layers    {_band(edit.layers)}; method {edit.method or '-'}; apply {edit.apply or '-'}; "
        f"judge {edit.judge or '-'}",
        f"times     created {_stamp(edit.created_at)}, applied {_stamp(edit.applied_at)}, "
        f"reverted {_stamp(edit.reverted_at)} (UTC)",
    ]
    if edit.job_id:
        lines.append(f"job       {edit.job_id}")
    if job is not None and job.result and job.result.get("refused"):
        lines.append(f"refused   {job.result['refused']}")
    if edit.error:
        lines.append(f"error     {edit.error.get('title')}: {edit.error.get('detail')}")
    lines += _metrics_lines(edit.metrics or {})
    for event in edit.history:
        lines.append(f"history   {_stamp(event.at)} {event.action:<6} by {event.actor} → state {event.state_version}")
    return lines


def _metrics_lines(metrics: dict[str, Any]) -> list[str]:
    correction = metrics.get("correction")
    if not correction:
        return []
    lines = [f"p(answer) {fmt_p(correction['p_pre_mean'])} → {fmt_p(correction['p_post_mean'])} on the prompt"]
    probes = (metrics.get("probes") or {}).get("correction") or []
    if probes:
        pre, post = (first_line(probes[0][when]["continuation"]) for when in ("pre", "post"))
        lines.append(f"greedy    {pre!r} → {post!r}")
    safety = metrics.get("safety") or {}
    canaries = safety.get("canaries") or {}
    if canaries:
        lines.append(
            f"safety    {'safe' if safety.get('safe') else 'not safe'}: canary facts kept {canaries['kept']}/"
            f"{canaries['checked']}, generic KL {safety['generic_kl']:.4f} nats/token"
        )
    evaluated = {name: values for name, values in metrics.items() if isinstance(values, dict) and values.get("n")}
    return [*lines, *set_table(evaluated)]


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    edits = list(client.edits(status=args.status, limit=args.limit))
    if args.json:
        print(json.dumps([edit.raw for edit in edits], indent=2, ensure_ascii=False))
        return 0
    if not edits:
        print("no edits" + (f" {args.status}" if args.status else ""))
        return 0
    print(f"{'id':<36}  {'status':<9}  {'created (UTC)':<19}  {'layers':<8}  {'method':<13}  prompt → answer")
    for edit in edits:
        wanted = f"{_short(edit.prompt, PROMPT_WIDTH)} → {edit.answer or '?'}"
        print(
            f"{edit.id:<36}  {edit.status:<9}  {_stamp(edit.created_at):<19}  {_band(edit.layers):<8}  "
            f"{edit.method or '-':<13}  {wanted}"
        )
    return 0


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    models = client.models()
    if args.json:
        print(json.dumps([model.raw for model in models], indent=2, ensure_ascii=False))
        return 0
    print(f"{'model':<40}  {'served':<6}  {'family':<8}  {'dtype':<8}  {'layers':>6}  {'state':>5}  "
          f"{'active':>6}  {'workers':>7}  {'pristine MiB':>12}")  # fmt: skip
    for m in models:
        live = sum(w.alive for w in m.workers)
        pristine = "-" if m.pristine_bytes is None else f"{m.pristine_bytes / 2**20:.2f}"
        print(
            f"{m.base_model:<40}  {'yes' if m.served else 'no':<6}  {m.family or '-':<8}  {m.dtype or '-':<8}  "
            f"{m.n_layers or '-':>6}  {m.state_version:>5}  {len(m.active_edits):>6}  {live:>7}  {pristine:>12}"
        )
    return 0


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    edit = client.edit_by_id(args.id)
    print(json.dumps(edit.raw, indent=2, ensure_ascii=False) if args.json else "\n".join(describe(edit)))
    return 0


def _change(action: str) -> RemoteCommand:
    def change(client: Client, args: argparse.Namespace) -> int:
        state = client.apply(args.id, args.if_match) if action == "apply" else client.revert(args.id, args.if_match)
        active = ", ".join(state.active_edits) or "none"
        print(f"{state.edit.id} {state.edit.status}; model state version {state.version}; active edits: {active}")
        return 0

    return change


def _follow(client: Client, edit: Edit, seconds: float) -> tuple[Edit, Job]:
    """Poll the edit's job, printing each new progress message, until it ends; WaitTimeout after ``seconds``."""
    assert edit.job_id is not None, "a new edit has a job"
    deadline = time.monotonic() + seconds
    shown = None
    while True:
        job = client.job(edit.job_id)
        progress = job.progress or {}
        step = f"{progress.get('step')}/{progress['total']} " if progress.get("total") else ""
        line = f"  {job.status}: {step}{progress.get('message') or ''}".rstrip()
        if line != shown:
            print(line, file=sys.stderr)
            shown = line
        if job.done:
            return client.edit_by_id(edit.id), job
        if time.monotonic() >= deadline:
            detail = f"edit {edit.id}: its job is still {job.status} after {seconds:g} s (`creme edits show` it later)"
            raise WaitTimeout(None, "about:blank", "Wait timed out", detail)
        time.sleep(POLL_SECONDS)


def cmd_patch(client: Client, args: argparse.Namespace) -> int:
    edit = client.edit(
        args.prompt, args.hop1, args.bridge, args.answer, layers=args.layers, method=args.method, apply=args.apply
    )
    print(f"submitted edit {edit.id} (job {edit.job_id})", file=sys.stderr)
    if args.wait == 0:
        print(edit.id)
        return 0
    edit, job = _follow(client, edit, args.wait)
    print("\n".join(describe(edit, job)))
    if edit.status == "failed":
        error = edit.error or {}
        title = error.get("title") or "Edit failed"
        raise CremeError(error.get("status"), error.get("type") or "about:blank", title, error.get("detail"), error)
    return 0


def run(args: argparse.Namespace, _settings: object) -> int:
    """Run ``args.remote`` with a client of ``--url``; a problem becomes one line on stderr and exit code 1."""
    try:
        with service_client(args) as client:
            return args.remote(client, args)
    except CremeError as exc:
        print(f"creme {args.remote_name}: {exc}", file=sys.stderr)
        return 1


def add_remote_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``edits`` (list, show, apply, revert), ``models`` and ``patch`` to the subcommands ``sub``."""
    common = service_options()

    def command(parent: argparse._SubParsersAction, name: str, remote: RemoteCommand, summary: str) -> Any:
        parser = parent.add_parser(name.split()[-1], parents=[common], help=summary)
        parser.set_defaults(func=run, remote=remote, remote_name=name)
        return parser

    edits = sub.add_parser("edits", help="list, show, apply or revert the edits of a running service")
    edits_sub = edits.add_subparsers(dest="edits_command", required=True)
    listing = command(edits_sub, "edits list", cmd_list, summary="the edits, newest first")
    listing.add_argument("--status", choices=EDIT_STATUSES, help="only edits with this status")
    listing.add_argument(
        "--limit", type=_positive_int, default=20, metavar="N", help="at most N (default: %(default)s)"
    )
    listing.add_argument("--json", action="store_true", help="print the edits as JSON")
    show = command(edits_sub, "edits show", cmd_show, summary="one edit: request, metrics, history")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print the edit as JSON")
    for action, what in (("apply", "add the edit to"), ("revert", "remove the edit from")):
        change = command(edits_sub, f"edits {action}", _change(action), summary=f"{what} the model state")
        change.add_argument("id")
        change.add_argument("--if-match", type=int, metavar="N", help="only if the model state is at version N")

    models = command(sub, "models", cmd_models, summary="the base models a running service serves")
    models.add_argument("--json", action="store_true", help="print the models as JSON")

    patch = command(sub, "patch", cmd_patch, summary="edit a failing two-hop prompt on a running service and wait")
    patch.add_argument("prompt", help="the two-hop prompt the model gets wrong")
    patch.add_argument("--hop1", required=True, metavar="PHRASE", help="the span of the prompt naming the first hop")
    patch.add_argument("--bridge", help="the first hop's answer (default: read from the model)")
    patch.add_argument("--answer", help="the right answer (default: read from the model)")
    patch.add_argument("--layers", type=parse_layers, help="edit band, e.g. 10-20 (default: the service's)")
    patch.add_argument("--method", choices=METHODS, help="edit method (default: the service's)")
    patch.add_argument("--apply", choices=APPLY_POLICIES, help="apply policy (default: the service's)")
    patch.add_argument(
        "--wait", type=_seconds, default=PATCH_WAIT, metavar="SECONDS",
        help="follow the job this long (default: %(default)g; 0: print the edit's id and return)",
    )  # fmt: skip
