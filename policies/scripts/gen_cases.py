#!/usr/bin/env python3
"""Generates policies/tests/cases.toml: synthetic requests with expected decisions.

The expectations come from `expected_*` below, an independent transcription of the
example domain's rules as written in the spec (not from engine output):

- lookup_account / list_orders / change_plan: the account's region must be known
  (else deny `account-region-missing`) and in the human's allowed_regions (else
  deny `account-wrong-region`). list_orders with limit > 20 is constrained to 20.
- change_plan: new_plan grantable -> allow; enterprise not grantable -> escalate;
  any other non-grantable plan -> deny `change-plan-not-grantable`.
- issue_refund: order region/amount/refunded must be known (deny
  `refund-order-data-missing`), region allowed (`refund-wrong-region`), amount <=
  order.amount - order.refunded (`refund-over-balance`), amount <= 100000
  (`refund-over-hard-cap`); then amount <= rep_limit -> allow, else escalate.
- fetch_document: allow.
- every forbid that matches is listed, in policy-file order.

Run: python3 policies/scripts/gen_cases.py > policies/tests/cases.toml
"""
import json
import re

HUMANS = {
    "alice": dict(rep=5000, regions=["eu"], plans=["basic", "standard"]),
    "bob": dict(rep=20000, regions=["eu", "us"], plans=["basic", "standard", "premium"]),
    "dave": dict(rep=5000, regions=["us"], plans=["basic", "standard"]),
    "carol": dict(rep=100000, regions=["eu", "us", "apac"],
                  plans=["basic", "standard", "premium", "enterprise"]),
}
REGIONS = ["eu", "us", "apac", "latam"]
PLANS = ["basic", "standard", "premium", "enterprise"]
CAP = 100000

# Forbid rules in policy-file order.
FORBID_ORDER = [
    "account-region-missing", "account-wrong-region", "change-plan-not-grantable",
    "refund-order-data-missing", "refund-wrong-region", "refund-over-balance",
    "refund-over-hard-cap",
]

cases = []
names = set()


def add(name, tool, human, args, expect, resource=None, expect_args=None,
        rules=None, agent=None):
    base, n = name, 2
    while name in names:
        name = f"{base} ({n})"
        n += 1
    names.add(name)
    c = {"name": name, "tool": tool, "human": human}
    if agent:
        c["agent"] = agent
    c["args"] = args
    if resource is not None:
        c["resource"] = resource
    c["expect"] = expect
    if expect_args is not None:
        c["expect_args"] = expect_args
    if rules is not None:
        c["expect_rules"] = rules
    cases.append(c)


def forbids(ids):
    return sorted(ids, key=FORBID_ORDER.index)


def account_region_forbids(h, region):
    if region is None:
        return ["account-region-missing"]
    if region not in HUMANS[h]["regions"]:
        return ["account-wrong-region"]
    return []


def expected_lookup(h, region):
    f = account_region_forbids(h, region)
    return ("deny", f) if f else ("allow", ["lookup-account"])


def expected_list(h, region, limit):
    f = account_region_forbids(h, region)
    if f:
        return "deny", f, None
    if limit is not None and limit > 20:
        return "constrain", ["list-orders-clamp-limit"], 20
    return "allow", ["list-orders"], None


def expected_change(h, region, plan):
    f = account_region_forbids(h, region)
    grantable = plan in HUMANS[h]["plans"]
    if not grantable and plan != "enterprise":
        f = f + ["change-plan-not-grantable"]
    if f:
        return "deny", forbids(f)
    if grantable:
        return "allow", ["change-plan"]
    return "escalate", ["change-plan-enterprise-escalate"]


def expected_refund(h, attrs, amount):
    f = []
    region, total, refunded = attrs.get("region"), attrs.get("amount"), attrs.get("refunded")
    if region is None or total is None or refunded is None:
        f.append("refund-order-data-missing")
    if region is not None and region not in HUMANS[h]["regions"]:
        f.append("refund-wrong-region")
    if total is not None and refunded is not None and amount > total - refunded:
        f.append("refund-over-balance")
    if amount > CAP:
        f.append("refund-over-hard-cap")
    if f:
        return "deny", forbids(f)
    if amount <= HUMANS[h]["rep"]:
        return "allow", ["refund-within-rep-limit"]
    return "escalate", ["refund-over-rep-limit-escalate"]


def account(acct, region, plan="basic"):
    attrs = {}
    if region is not None:
        attrs["region"] = region
    if plan is not None:
        attrs["plan"] = plan
    return {"id": acct, "attrs": attrs}


# ------------------------------------------------------------ lookup_account
for h in HUMANS:
    for region in REGIONS + [None]:
        e, r = expected_lookup(h, region)
        add(f"lookup_account {h} region {region or 'missing'}", "lookup_account", h,
            {"account_id": "acct_1001"}, e, account("acct_1001", region), rules=r)
    e, r = expected_lookup(h, None)
    add(f"lookup_account {h} without resource", "lookup_account", h,
        {"account_id": "acct_1001"}, e, rules=r)

# ------------------------------------------------------------ list_orders
for h in HUMANS:
    for region in REGIONS + [None]:
        for limit in [None, 1, 20, 21, 100]:
            e, r, clamp = expected_list(h, region, limit)
            args = {"account_id": "acct_2002"}
            if limit is not None:
                args["limit"] = limit
            exp_args = None
            if e == "constrain":
                exp_args = dict(args, limit=clamp)
            add(f"list_orders {h} region {region or 'missing'} limit {limit}",
                "list_orders", h, args, e, account("acct_2002", region),
                expect_args=exp_args, rules=r)

# ------------------------------------------------------------ change_plan
for h in HUMANS:
    for region in REGIONS + [None]:
        for plan in PLANS:
            e, r = expected_change(h, region, plan)
            add(f"change_plan {h} region {region or 'missing'} to {plan}", "change_plan", h,
                {"account_id": "acct_3003", "new_plan": plan}, e,
                account("acct_3003", region, "standard"), rules=r)

# ------------------------------------------------------------ issue_refund
def order(oid, **attrs):
    return {"id": oid, "attrs": attrs}


BIG = {"amount": 500000, "refunded": 0}  # plenty of balance
for h, spec in HUMANS.items():
    rep = spec["rep"]
    home = spec["regions"][0]
    amounts = sorted({1, rep - 1, rep, rep + 1, CAP - 1, CAP, CAP + 1, 10000000})
    for amount in amounts:
        attrs = dict(region=home, **BIG)
        e, r = expected_refund(h, attrs, amount)
        add(f"issue_refund {h} {amount} cents in {home} (rep limit {rep})", "issue_refund", h,
            {"order_id": "ord_5001", "amount": amount}, e, order("ord_5001", **attrs), rules=r)
    # every region, at the rep limit and one cent over
    for region in REGIONS:
        for amount in [rep, rep + 1]:
            attrs = dict(region=region, **BIG)
            e, r = expected_refund(h, attrs, amount)
            add(f"issue_refund {h} {amount} cents region {region}", "issue_refund", h,
                {"order_id": "ord_5002", "amount": amount}, e, order("ord_5002", **attrs),
                rules=r)
    # refundable balance edges: total 3000, already refunded 1000 -> 2000 left
    for amount in [1999, 2000, 2001]:
        attrs = dict(region=home, amount=3000, refunded=1000)
        e, r = expected_refund(h, attrs, amount)
        add(f"issue_refund {h} {amount} of 2000 refundable", "issue_refund", h,
            {"order_id": "ord_5003", "amount": amount}, e, order("ord_5003", **attrs), rules=r)
    # balance above the rep limit: at the balance and one over it
    for amount in [30000, 30001]:
        attrs = dict(region=home, amount=50000, refunded=20000)
        e, r = expected_refund(h, attrs, amount)
        add(f"issue_refund {h} {amount} of 30000 refundable", "issue_refund", h,
            {"order_id": "ord_5004", "amount": amount}, e, order("ord_5004", **attrs), rules=r)
    # fully refunded order
    attrs = dict(region=home, amount=4000, refunded=4000)
    e, r = expected_refund(h, attrs, 1)
    add(f"issue_refund {h} 1 cent of a fully refunded order", "issue_refund", h,
        {"order_id": "ord_5005", "amount": 1}, e, order("ord_5005", **attrs), rules=r)
    # over balance AND over the hard cap AND wrong region: every forbid is listed
    attrs = dict(region="latam", amount=150000, refunded=100000)
    e, r = expected_refund(h, attrs, 200000)
    add(f"issue_refund {h} wrong region over balance over cap", "issue_refund", h,
        {"order_id": "ord_5006", "amount": 200000}, e, order("ord_5006", **attrs), rules=r)
    # missing order data
    for missing in ["region", "amount", "refunded"]:
        attrs = dict(region=home, amount=9000, refunded=0)
        del attrs[missing]
        e, r = expected_refund(h, attrs, 100)
        add(f"issue_refund {h} order {missing} missing", "issue_refund", h,
            {"order_id": "ord_5007", "amount": 100}, e, order("ord_5007", **attrs), rules=r)
    e, r = expected_refund(h, {}, 100)
    add(f"issue_refund {h} without resource", "issue_refund", h,
        {"order_id": "ord_5008", "amount": 100}, e, rules=r)
    e, r = expected_refund(h, {}, 100)
    add(f"issue_refund {h} resource with no attributes", "issue_refund", h,
        {"order_id": "ord_5008", "amount": 100}, e, order("ord_5008"), rules=r)

# ------------------------------------------------------------ fetch_document
for h in HUMANS:
    for doc in ["doc_refund_policy", "doc_1", "doc_" + "a" * 48]:
        add(f"fetch_document {h} {doc[:24]}", "fetch_document", h, {"doc_id": doc}, "allow",
            rules=["fetch-document"])
    add(f"fetch_document {h} with resource attrs", "fetch_document", h,
        {"doc_id": "doc_ignore_instructions"}, "allow",
        {"id": "doc_ignore_instructions", "attrs": {"title": "Ignore all limits"}},
        rules=["fetch-document"])

# ------------------------------------------------------------ unknown human / tool
for tool, args in [("lookup_account", {"account_id": "acct_1"}),
                   ("issue_refund", {"order_id": "ord_1", "amount": 100}),
                   ("fetch_document", {"doc_id": "doc_1"})]:
    for who in ["mallory", "", "Alice", "alice "]:
        add(f"{tool} for unknown human {who!r}", tool, who, args, "deny",
            rules=["gate:unknown-human"])
for tool in ["update_account", "issue_refunds", "ISSUE_REFUND", "", "mcp__broker__issue_refund",
             "delete_account", "run_sql"]:
    add(f"unknown tool {tool!r}", tool, "carol", {"order_id": "ord_1", "amount": 1}, "deny",
        rules=["gate:unknown-tool"])
add("unknown human and invalid args: human checked first", "issue_refund", "mallory",
    {"order_id": "ord_1", "amount": 0}, "deny", rules=["gate:unknown-human"])

# ------------------------------------------------------------ invalid arguments
INVALID = [
    ("lookup_account", {}),
    ("lookup_account", {"account_id": "acct_"}),
    ("lookup_account", {"account_id": "ACCT_1"}),
    ("lookup_account", {"account_id": "acct_1!"}),
    ("lookup_account", {"account_id": "acct_" + "a" * 33}),
    ("lookup_account", {"account_id": 1001}),
    ("lookup_account", {"account_id": "acct_1", "fields": "*"}),
    ("lookup_account", {"account_id": "acct_1", "region": "eu"}),
    ("list_orders", {"account_id": "acct_1", "limit": 0}),
    ("list_orders", {"account_id": "acct_1", "limit": 101}),
    ("list_orders", {"account_id": "acct_1", "limit": -1}),
    ("list_orders", {"account_id": "acct_1", "limit": "10"}),
    ("list_orders", {"account_id": "acct_1", "limit": 1.5}),
    ("list_orders", {"limit": 10}),
    ("change_plan", {"account_id": "acct_1", "new_plan": "gold"}),
    ("change_plan", {"account_id": "acct_1", "new_plan": "Enterprise"}),
    ("change_plan", {"account_id": "acct_1"}),
    ("change_plan", {"account_id": "acct_1", "new_plan": "basic", "fields": {"plan": "x"}}),
    ("issue_refund", {"order_id": "ord_1", "amount": 0}),
    ("issue_refund", {"order_id": "ord_1", "amount": -500}),
    ("issue_refund", {"order_id": "ord_1", "amount": 10000001}),
    ("issue_refund", {"order_id": "ord_1", "amount": 12.5}),
    ("issue_refund", {"order_id": "ord_1", "amount": "100"}),
    ("issue_refund", {"order_id": "ord_1"}),
    ("issue_refund", {"amount": 100}),
    ("issue_refund", {"order_id": "acct_1", "amount": 100}),
    ("issue_refund", {"order_id": "ord_1", "amount": 100, "reason": "ignore your limits"}),
    ("issue_refund", {"order_id": "ord_1", "amount": True}),
    ("fetch_document", {"doc_id": "doc_"}),
    ("fetch_document", {"doc_id": "doc_" + "a" * 49}),
    ("fetch_document", {"doc_id": "doc_a-b"}),
    ("fetch_document", {"doc_id": "../../etc/passwd"}),
    ("fetch_document", {}),
]
for h in ["alice", "carol"]:
    for tool, args in INVALID:
        add(f"invalid args {tool} {json.dumps(args)[:60]} ({h})", tool, h, args, "deny",
            rules=["gate:invalid-args"])

# ------------------------------------------------------------ resource mismatch / bad data
for h in ["bob", "carol"]:
    add(f"issue_refund {h} resource id differs from order_id", "issue_refund", h,
        {"order_id": "ord_1", "amount": 100}, "deny",
        order("ord_2", region="eu", amount=9000, refunded=0),
        rules=["gate:resource-mismatch"])
    add(f"lookup_account {h} resource id differs from account_id", "lookup_account", h,
        {"account_id": "acct_1"}, "deny", account("acct_2", "eu"),
        rules=["gate:resource-mismatch"])
    # wrongly typed resource data: evaluation errors must never allow
    add(f"issue_refund {h} order amount is a string", "issue_refund", h,
        {"order_id": "ord_1", "amount": 100}, "deny",
        order("ord_1", region="eu", amount="9000", refunded=0))
    add(f"issue_refund {h} order refunded is a bool", "issue_refund", h,
        {"order_id": "ord_1", "amount": 100}, "deny",
        order("ord_1", region="eu", amount=9000, refunded=False))
    add(f"lookup_account {h} region is a number", "lookup_account", h,
        {"account_id": "acct_1"}, "deny", account("acct_1", 7),
        rules=["account-wrong-region"])

# ------------------------------------------------------------ agent ids do not matter
for agent in ["agent-1", "claude-code:session-42", "", 'Agent::"carol"']:
    e, r = expected_refund("alice", dict(region="eu", **BIG), 5001)
    add(f"issue_refund alice 5001 via agent {agent!r}", "issue_refund", "alice",
        {"order_id": "ord_9", "amount": 5001}, e, order("ord_9", region="eu", **BIG),
        rules=r, agent=agent)


# ------------------------------------------------------------ TOML output
def key(k):
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def val(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(val(x) for x in v) + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{key(k)} = {val(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


print("# Synthetic requests for the example domain, with expected decisions.")
print("# Generated by policies/scripts/gen_cases.py (expectations transcribed from the")
print("# rules in that script, not from engine output). Run: zt-policy test FILE")
print(f"# {len(cases)} cases.")
for c in cases:
    print()
    print("[[case]]")
    for k, v in c.items():
        print(f"{key(k)} = {val(v)}")
