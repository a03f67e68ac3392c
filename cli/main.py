"""The ``creme`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.common import fmt_p, parse_layers, set_table
from cli.remote import add_remote_commands
from cli.transfer import add_transfer_commands
from service.engine.judging import DEFAULT_RULE, JUDGE_RULES
from service.engine.options import DEFAULT_METHOD, METHODS, TEMPLATE_SETS
from service.logs import configure_logging
from service.settings import Settings, get_settings

if TYPE_CHECKING:
    from service.db.models import ApiKey
    from service.engine.loading import LoadedModel


def load_from_settings(settings: Settings):
    """The model ``settings`` name, with its dtype and device (used by the commands and benchmarks)."""
    from service.engine.loading import load_model

    print(f"loading {settings.model} ...", file=sys.stderr)
    return load_model(settings.model, cache_dir=settings.cache_dir, dtype=settings.dtype, device=settings.device)


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from service.dataset_eval import CaseOutcome, evaluate_dataset
    from service.engine.cases import CaseFormatError, load_cases
    from service.engine.methods import method_spec

    try:
        cases = load_cases(args.data, limit=args.limit)
    except (OSError, CaseFormatError) as exc:
        print(f"creme eval: {exc}", file=sys.stderr)
        return 2
    lm = load_from_settings(settings)
    bar: tqdm | None = None
    print(f"checking {len(cases)} cases for compositional failures ...", file=sys.stderr)

    def on_gap(gap) -> None:
        nonlocal bar
        print(
            f"first hop right: {gap.hop1_acc:.1%}; both hops right: {gap.both_hops}; "
            f"composition failed on {len(gap.failing_ids)} of those",
            file=sys.stderr,
        )
        bar = tqdm(total=len(gap.failing_ids), desc="edit+evaluate+revert", unit="case", file=sys.stderr)
        bar.write(f"{'case':<18} {'p(answer) before → after':>26}  greedy before → after  verdict", file=sys.stdout)

    def on_case(outcome: CaseOutcome) -> None:
        row = outcome.to_dict()
        change = f"{fmt_p(row['p_pre'])} → {fmt_p(row['p_post'])}"
        texts = f"{row['greedy_pre'].strip()[:28]!r} → {row['greedy_post'].strip()[:28]!r}"
        safety = outcome.safety
        verdict = (
            f"{'fixed' if outcome.fixed else 'not fixed'}, canaries {safety.canaries.kept}/{safety.canaries.n_checked}"
        )
        if bar is not None:
            bar.write(f"{outcome.id:<18} {change:>26}  {texts}  {verdict}", file=sys.stdout)
            bar.update(1)

    def on_stack(reading: dict) -> None:
        line = (
            f"stacked {reading['n_edits']:>3} edits: {reading['holding']} still fixed, "
            f"canaries {reading['canaries_kept']}/{reading['canaries']}, "
            f"generic KL {reading['generic_kl']:.4f} nats/token"
        )
        (bar.write if bar is not None else print)(line)

    try:
        spec = method_spec(args.method, args.templates, model=lm.name)
    except ValueError as exc:
        print(f"creme eval: {exc}", file=sys.stderr)
        return 2
    report = evaluate_dataset(
        lm,
        cases,
        layers=args.layers,
        spec=spec,
        rule=args.judge,
        stack=args.stack,
        cache_dir=settings.cache_dir,
        on_gap=on_gap,
        on_case=on_case,
        on_stack=on_stack,
    )
    if bar is not None:
        bar.close()
    _print_summary(report["summary"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plots:
        from service.eval_plots import write_eval_plots

        written = write_eval_plots(report, args.plots)
        for path in written:
            print(f"wrote {path}", file=sys.stderr)
        if not written:
            print("creme eval: no figure written: no case was edited", file=sys.stderr)
    return 0


def _print_summary(summary: dict) -> None:
    print(
        f"\nmodel {summary['model']}, method {summary['method']}, "
        f"layers {summary['layers'][0]}-{summary['layers'][-1]}, "
        f"judge {summary['judge']}: {summary['n_failing']} failing of {summary['n_cases']} cases; "
        f"median edit {summary['edit_seconds_median'] or 0:.2f} s"
    )
    if summary["n_failing"]:
        print(
            f"fixed {summary['fixed']}/{summary['n_failing']}; all {summary['canaries']} canary facts kept by "
            f"{summary['all_canaries_kept']} edits (mean kept {summary['canaries_kept_mean']:.1f}); "
            f"safe {summary['safe']}; generic KL {summary['generic_kl_mean']:.4f} nats/token"
        )
    print("\n".join(set_table(summary)))


def cmd_lens(args: argparse.Namespace, settings: Settings) -> int:
    from service.engine.lens import format_lens_table, logit_lens

    lm = load_from_settings(settings)
    result = logit_lens(lm, args.prompt, args.target, top_k=args.top_k, apply_final_norm=not args.no_final_norm)
    print(format_lens_table(result))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from cli.demo import run_demo

    return run_demo(load_from_settings(settings), settings.cache_dir)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from service.db.migrate import current_revision, upgrade

    upgrade(settings.database_url)
    print(f"database at revision {current_revision(settings.database_url)}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from workers.worker import main as worker_main

    worker_main(settings)
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """The gateway; plus one in-process worker on the loaded model when no Redis is configured."""
    import uvicorn

    from service.db import make_engine, make_session_factory
    from service.db.migrate import current_revision, head_revision, upgrade
    from service.keys import BindRefused, check_bind_allowed

    host, port = args.host or settings.host, args.port or settings.port
    embedded = settings.redis_url is None
    if embedded:
        upgrade(settings.database_url)
    elif current_revision(settings.database_url) != head_revision():
        print("creme serve: the database is not migrated; run `creme migrate` first", file=sys.stderr)
        return 2
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    try:  # before the (slow) imports and model load, so a refusal is immediate
        check_bind_allowed(host, factory, require_auth=settings.require_auth)
    except BindRefused as exc:
        print(f"creme serve: {exc}", file=sys.stderr)
        engine.dispose()
        return 2

    from api import create_app
    from service.jobs import queue_for
    from workers.worker import Worker

    queue = queue_for(settings)
    worker: Worker | None = None
    lm: LoadedModel | None = None
    if embedded:
        lm = load_from_settings(settings)
        worker = Worker(settings, lm, factory, queue)
        worker.start()
    app = create_app(
        settings,
        session_factory=factory,
        queue=queue,
        n_layers=lm.n_layers if lm else None,
        tokenizer=lm.tokenizer if lm else None,
    )
    mode = "embedded (in-process queue and worker)" if embedded else "gateway (Redis queue, separate workers)"
    print(f"creme serve: {mode} on http://{host}:{port}", file=sys.stderr)
    try:
        # Uvicorn's records go through our handler; the access log is ours (one line per request).
        level = "info" if args.verbose else "warning"
        uvicorn.run(app, host=host, port=port, log_level=level, log_config=None, access_log=False)
    finally:
        if worker is not None:
            worker.stop()
        queue.close()
        engine.dispose()
    return 0


def _key_row(key: ApiKey) -> dict[str, Any]:
    def stamp(value: datetime | None) -> str | None:
        return value.isoformat(timespec="seconds") if value is not None else None

    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": list(key.scopes),
        "created_at": stamp(key.created_at),
        "last_used_at": stamp(key.last_used_at),
        "revoked_at": stamp(key.revoked_at),
    }


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    """Create, list or revoke API keys in the (migrated) database at ``settings.database_url``."""
    from sqlalchemy.exc import SQLAlchemyError

    from service import keys
    from service.db import make_engine, make_session_factory
    from service.db.migrate import current_revision, head_revision
    from service.usecases.errors import UseCaseError

    try:
        migrated = current_revision(settings.database_url) == head_revision()
    except SQLAlchemyError as exc:
        print(f"creme keys: cannot reach the database: {type(exc).__name__}", file=sys.stderr)
        return 2
    if not migrated:
        print("creme keys: the database is not migrated; run `creme migrate` first", file=sys.stderr)
        return 2
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            if args.keys_command == "create":
                key, token = keys.create_key(session, args.name, args.scopes or ["read"])
                print(f"created key {key.id} {key.name!r} with scopes {','.join(key.scopes)}", file=sys.stderr)
                print("the key is shown only this once; store it now:", file=sys.stderr)
                print(token)
            elif args.keys_command == "list":
                rows = [_key_row(k) for k in keys.list_keys(session)]
                if args.json:
                    print(json.dumps(rows, indent=2))
                    return 0
                for row in rows:
                    state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
                    used = row["last_used_at"] or "never"
                    print(
                        f"{row['id']}  {keys.KEY_PREFIX}{row['prefix']}…  {','.join(row['scopes']):<15} "
                        f"{state:<33} last used {used:<25} {row['name']}"
                    )
            else:
                key = keys.revoke_key(session, args.key)
                print(f"revoked key {key.id} ({keys.KEY_PREFIX}{key.prefix}…, {key.name!r})")
    except (ValueError, UseCaseError) as exc:
        print(f"creme keys {args.keys_command}: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from service.db.models import API_SCOPES

    parser = argparse.ArgumentParser(prog="creme", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="edit, evaluate and revert every compositional failure of a JSONL dataset")
    ev.add_argument("data", type=Path, help="JSONL file of two-hop cases")
    ev.add_argument("--limit", type=int, default=None, help="read only the first N cases")
    ev.add_argument("--layers", type=parse_layers, default=None, help="edit band, e.g. 10-20 (default: per model)")
    ev.add_argument("--json", type=Path, default=None, help="write the full report here")
    ev.add_argument(
        "--plots", type=Path, default=None, metavar="DIR", help="write eval-summary.png and eval-cases.png here"
    )
    ev.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="edit method (default: %(default)s)")
    ev.add_argument(
        "--templates",
        choices=sorted(TEMPLATE_SETS),
        default=None,
        help="template set (default: english for auto on the embedded model, else published)",
    )
    ev.add_argument("--judge", choices=JUDGE_RULES, default=DEFAULT_RULE, help="judging rule (default: %(default)s)")
    ev.add_argument("--stack", action="store_true", help="keep each edit applied while the next is computed")
    ev.set_defaults(func=cmd_eval)

    lens = sub.add_parser("lens", help="print the per-layer Logit Lens of a prompt")
    lens.add_argument("prompt")
    lens.add_argument("--target", action="append", default=[], help="a string to track (repeatable)")
    lens.add_argument("--top-k", type=int, default=5)
    lens.add_argument("--no-final-norm", action="store_true", help="skip the final norm (as the published code)")
    lens.set_defaults(func=cmd_lens)

    demo = sub.add_parser("demo", help="find a question the model fails, patch it, check it and revert it exactly")
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="run the HTTP API (with an in-process worker unless CREME_REDIS_URL is set)")
    serve.add_argument("--host", default=None, help="bind address (default CREME_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default CREME_PORT, 8000)")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a worker process: load the model, consume jobs from Redis")
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser("migrate", help="create or upgrade the database schema (Alembic)")
    migrate.set_defaults(func=cmd_migrate)

    keys = sub.add_parser("keys", help="create, list or revoke API keys (stored only as sha256 hashes)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it (once) on stdout")
    create.add_argument("name", help="who or what the key is for")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        choices=API_SCOPES,
        help="read, edit or admin (repeatable; default read); admin implies edit implies read",
    )
    listing = keys_sub.add_parser("list", help="list keys: id, display prefix, scopes, last use, revocation")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    revoke = keys_sub.add_parser("revoke", help="revoke a key; requests with it get 401 from then on")
    revoke.add_argument("key", help="the key's id or its display prefix")
    keys.set_defaults(func=cmd_keys)

    add_remote_commands(sub)
    add_transfer_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Spinning OpenMP threads starve other model processes on the same cores (measured: a 10-token
    # greedy decode took 54 s instead of 3 s beside two busy processes). Set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_format, level=logging.INFO if args.verbose else logging.WARNING)
    return int(args.func(args, settings) or 0)
