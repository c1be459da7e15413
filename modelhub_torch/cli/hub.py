"""``modelhub serve``, ``token``, ``login``/``logout`` and ``search``: running a hub
and talking to one."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

from modelhub_torch.cli.output import Output, human_size, table
from modelhub_torch.errors import ModelHubError


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    try:
        import uvicorn

        from modelhub_torch.hub.limits import Limits
        from modelhub_torch.hub.server import CONFIG_ENV, create_app
    except ImportError as exc:
        raise ModelHubError(f"serving a hub needs the hub extra ({exc.name} is missing): "
                            "pip install 'modelhub_torch[hub]'") from None
    location = args.path or args.repo
    limits = Limits(max_body=args.max_body, rate=args.rate, burst=max(1, int(2 * args.rate)))
    app = create_app(location, args.storage_options, public=args.public, limits=limits)
    where = f"http://{args.host}:{args.port}"
    print(f"serving {app.state.hub.repo.url} at {where} ({'anyone may read' if args.public else 'tokens only'}"
          f"{f'; {args.workers} worker processes' if args.workers > 1 else ''}; API docs at {where}/docs); "
          "Ctrl-C stops", file=sys.stderr, flush=True)
    if args.workers > 1:  # each worker builds the same app from the environment (server.app_from_environment)
        os.environ[CONFIG_ENV] = json.dumps({"location": location, "storage_options": args.storage_options,
                                             "public": args.public, "max_body": args.max_body, "rate": args.rate})
        uvicorn.run(f"{create_app.__module__}:app_from_environment", factory=True, workers=args.workers,
                    host=args.host, port=args.port, log_level="warning")
    else:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _tokens(args: argparse.Namespace):
    from modelhub_torch.hub.tokens import TokenStore
    from modelhub_torch.repository import Repository

    repo = Repository(args.repo, args.storage_options)
    return TokenStore(repo.loc)


def cmd_token(args: argparse.Namespace, out: Output) -> int:
    tokens = _tokens(args)
    if args.action == "create":
        token = tokens.create(args.scope, args.models, args.name or "")
        models = f" for models {', '.join(args.models)}" if args.models else ""
        out.emit({"token": token, "scope": args.scope, "models": args.models or []},
                 f"{token}\n(scope {args.scope}{models}; shown once: only its hash is kept. Clients use it with "
                 "'modelhub login URL' or MODELHUB_TOKEN)")
    elif args.action == "list":
        recs = tokens.records()
        rows = [[r.id, ",".join(r.scopes), ",".join(r.models) or "*", r.name, r.created_at] for r in recs]
        out.emit([r.__dict__ | {"digest": None} for r in recs],
                 table(["ID", "SCOPES", "MODELS", "NAME", "CREATED"], rows) + f"\n{len(recs)} token(s)")
    else:
        if not tokens.revoke(args.id):
            raise ModelHubError(f"no token {args.id} on this hub (see 'modelhub token list')")
        out.emit({"revoked": args.id}, f"revoked {args.id} (hub processes stop accepting it within seconds)")
    return 0


def cmd_login(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.hub.client import HubClient
    from modelhub_torch.hub.credentials import save_token

    token = args.token
    if not token:
        token = getpass.getpass("token: ") if sys.stdin.isatty() else sys.stdin.readline()
    token = token.strip()
    if not token:
        raise ModelHubError("no token given: pass --token, or type it at the prompt")
    client = HubClient(args.url, token)
    try:
        who = client.whoami()
    finally:
        client.close()
    path = save_token(args.url, token)
    out.emit({"url": args.url, **who, "saved": str(path)},
             f"logged in to {args.url} (scopes: {', '.join(who['scopes'])}"
             + (f"; models {', '.join(who['models'])}" if who["models"] else "") + f"); token saved in {path}")
    return 0


def cmd_logout(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.hub.credentials import forget_token

    gone = forget_token(args.url)
    out.emit({"url": args.url, "forgotten": gone},
             f"forgot the token for {args.url}" if gone else f"no token was saved for {args.url}")
    return 0


def cmd_search(args: argparse.Namespace, out: Output) -> int:
    from modelhub_torch.hub.client import client_for

    doc = client_for(args.hub).search(" ".join(args.query), args.page, args.per_page)
    rows = [[r["ref"], ", ".join(r["tags"]), _metrics(r["metrics"]), human_size(r["stored_bytes"]),
             r["created_at"][:16].replace("T", " "), (r["message"] or "")[:40]] for r in doc["results"]]
    pages = max(1, -(-doc["total"] // doc["per_page"]))
    text = table(["VERSION", "ALIASES", "METRICS", "STORED", "CREATED (UTC)", "MESSAGE"], rows)
    text += f"\n{doc['total']} match(es) ({doc['kind']}); page {doc['page']} of {pages}"
    out.emit(doc, text)
    return 0


def _metrics(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(metrics.items())[:3])
