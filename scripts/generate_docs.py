#!/usr/bin/env python3
"""Regenerate the parts of docs/ that the code defines, so they cannot drift from it:

- docs/operating.md: the table of every setting (credits_service/settings.py);
- docs/api.md: the table of RPCs with the role each needs (the proto and transport/grpc/auth.py)
  and the table of errors with their status codes (domain/errors/ and the one table in
  transport/grpc/errors.py).

Each part sits between `<!-- generated: NAME -->` and `<!-- end generated -->`. Run it after
changing those; tests/unit/test_docs.py fails while a part is stale:

    .venv/bin/python scripts/generate_docs.py           # rewrite the parts
    .venv/bin/python scripts/generate_docs.py --check   # exit 1 if a part is stale
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

END = "<!-- end generated -->"


def settings_table() -> str:
    from credits_service.settings import ENV_PREFIX, describe, external_name

    rows = ["| Setting | Default | Allowed | What it does |", "|---|---|---|---|"]
    section = None
    for title, field in describe():
        if title != section:
            section = title
            rows.append(f"| **{title}** | | | |")
        name = external_name(field)
        names = [f"`--{n.replace('_', '-')}`" for n in (name, *field.metadata["aliases"])]
        flags = " (formerly " + ", ".join(names[1:]) + ")" if names[1:] else ""
        setting = f"{names[0]}{flags}<br>`{ENV_PREFIX}{name.upper()}`"
        rows.append(f"| {setting} | {_default(field.default)} | {_allowed(field.metadata)} | "
                    f"{field.metadata['help']} |")
    return "\n".join(rows)


def _default(value: object) -> str:
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _allowed(meta: dict) -> str:
    if meta["choices"]:
        return ", ".join(f"`{choice}`" for choice in meta["choices"])
    low, high = meta["low"], meta["high"]
    if low is None:
        return ""
    left = "(" if meta["low_open"] else "["
    return f"{left}{_number(low)}, {_number(high)}]"


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else str(value)


def rpc_table() -> str:
    from credits.v1 import credits_pb2
    from credits_service.transport.grpc.auth import BILLING_METHODS, SERVICE_METHODS

    rows = ["| RPC | Request | Role | Idempotent by |", "|---|---|---|---|"]
    keyed = {"EnsureAccount": "`account_id` (creates once)", "Grant": "`idempotency_key`",
             "Adjust": "`idempotency_key`", "SetAccountStatus": "(safe to repeat)",
             "ChangePlan": "(safe to repeat)", "Transfer": "`idempotency_key`",
             "Refund": "`idempotency_key`",
             "CheckAndReserve": "`idempotency_key`",
             "BatchCheckAndReserve": "each item's `idempotency_key`",
             "Commit": "reservation and amount", "BatchCommit": "each item's reservation",
             "Release": "reservation", "ExtendReservation": "(safe to repeat)",
             "ReloadRateCard": "(safe to repeat)", "Subscribe": "`idempotency_key`",
             "ChangeSubscription": "`idempotency_key`",
             "CancelSubscription": "`idempotency_key`",
             "CreateOrganization": "`organization_id` (creates once)",
             "AddMember": "(safe to repeat)", "SetMemberCaps": "(safe to repeat)",
             "RemoveMember": "(a repeat: MEMBER_NOT_FOUND)",
             "WatchEvents": "(a stream: resume from the last cursor)",
             "SetBalanceAlert": "(safe to repeat)",
             "RedeliverDeadLetter": "(a repeat returns it as it is)"}
    for method in credits_pb2.DESCRIPTOR.services_by_name["CreditsService"].methods:
        roles = [role for role, allowed in (("service", SERVICE_METHODS),
                                            ("billing", BILLING_METHODS)) if method.name in allowed]
        role = " or ".join([*roles, "admin"])
        if method.name == "Grant":
            role = "admin; billing (PURCHASE only)"
        if method.name == "Transfer":
            role = "admin (and service with `--service-transfers`)"
        rows.append(f"| [`{method.name}`](#{method.name.lower()}) | `{method.input_type.name}` "
                    f"| {role} | {keyed.get(method.name, '(a read)')} |")
    return "\n".join(rows)


def errors_table() -> str:
    from credits_service.transport.grpc.errors import STATUS_CODES

    rows = ["| Code | Reason | When |", "|---|---|---|"]
    seen: set[str] = set()
    for cls, code in STATUS_CODES.items():
        if cls.reason in seen:
            continue
        seen.add(cls.reason)
        rows.append(f"| {code.name} | `{cls.reason}` | {_first_paragraph(cls)} |")
    return "\n".join(rows)


def _first_paragraph(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


PARTS: dict[str, dict[str, Callable[[], str]]] = {
    "docs/operating.md": {"settings": settings_table},
    "docs/api.md": {"rpcs": rpc_table, "errors": errors_table},
}


def render(text: str, name: str, content: str) -> str:
    """`text` with the part `name` replaced by `content`."""
    start = f"<!-- generated: {name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"no '{start}' ... '{END}' part")
    return pattern.sub(lambda _: f"{start}\n{content}\n{END}", text, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a part is stale")
    args = parser.parse_args(argv)
    stale = []
    for relative, parts in PARTS.items():
        path = ROOT / relative
        text = path.read_text()
        fresh = text
        for name, make in parts.items():
            fresh = render(fresh, name, make())
        if fresh != text:
            stale.append(relative)
            if not args.check:
                path.write_text(fresh)
    if stale and args.check:
        print(f"stale generated parts in {', '.join(stale)}: run scripts/generate_docs.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
