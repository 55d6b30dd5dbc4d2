"""Counts the routes of the official Device Update SDK (`azure-iot-deviceupdate`) that
`otaforge serve` answers: lists the request builders of the installed package (one per
operation: the denominator comes from the package, not from a list here), calls every public
operation of `DeviceUpdateClient.device_update` and `.device_management` against serve, and
matches each request sent to a builder's (method, path template).

An operation is *missing* when serve answered a request of it with 404 `no such route` or 405
(it has no such route or method), *broken* when serve answered 5xx, and *not exercised* when no
request of it was sent; anything else (a 200, or a 404 for a resource that does not exist)
proves the route. Operations run in phases so that what is read exists: creates first, then
reads, then actions, then deletes.

Usage: adu_sdk_coverage.py ENDPOINT INSTANCE TOKEN API_VERSION FIXTURE_JSON

FIXTURE_JSON names what serve holds: {"groupId", "deviceClassId", "deviceId", "moduleId",
"update": {"provider", "name", "version"}, "deploymentId", "logCollectionId", "importBody"}.

Prints one JSON object {"apiVersion", "total", "covered", "operations", "missing": [...],
"calls": {...}} and `N/TOTAL` on stderr; exits 1 unless every builder is covered.
"""
import inspect
import json
import re
import sys

from azure.core.exceptions import HttpResponseError
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.iot.deviceupdate import DeviceUpdateClient
import azure.iot.deviceupdate.operations._operations as generated

from adu_sdk_compat import Unused


class Recorder(SansIOHTTPPolicy):
    """https -> http on loopback, the static bearer token, and a log of every exchange."""

    def __init__(self, token, log):
        self.token, self.log = token, log

    def on_request(self, request):
        req = request.http_request
        if req.url.startswith("https://"):
            host, sep, path = req.url[len("https://"):].partition("/")
            req.url = "http://" + host.replace("%3A", ":").replace("%3a", ":") + sep + path
        req.headers["Authorization"] = "Bearer " + self.token

    def on_response(self, request, response):
        res = response.http_response
        error = {}
        if res.status_code >= 400:
            # LRO initial requests are streamed: read the body before it is parsed.
            res.read()
            try:
                error = (json.loads(res.text() or "{}") or {}).get("error") or {}
            except ValueError:
                error = {}
        self.log.append({
            "method": request.http_request.method,
            "path": request.http_request.url.split("?")[0].split("://", 1)[-1].partition("/")[2],
            "status": res.status_code,
            "code": error.get("code"),
            "message": error.get("message"),
        })


def builders():
    """Every request builder of the package: name -> (method, path template)."""
    out = {}
    for name, f in vars(generated).items():
        if not (name.startswith("build_device_") and name.endswith("_request") and callable(f)):
            continue
        kw = {}
        for p in inspect.signature(f).parameters.values():
            if p.kind == p.VAR_KEYWORD or p.default is not p.empty:
                continue
            kw[p.name] = "{%s}" % p.name
        kw["instance_id"] = "{instanceId}"
        source = inspect.getsource(f)
        if 'kwargs.pop("content_type")' in source:
            kw["content_type"] = "application/json"
        if "filter: str" in source and "filter" not in kw:
            kw["filter"] = "x"
        req = f(**kw)
        path = req.url.split("?")[0].replace("%7B", "{").replace("%7D", "}")
        out[name] = (req.method, path.lstrip("/"))
    return out


def pattern(template, instance):
    t = re.escape(template.replace("{instanceId}", instance))
    return re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", t) + "$")


CREATES = ["begin_import_update", "create_or_update_deployment", "start_log_collection",
           "begin_import_devices", "update_device_class"]
ACTIONS = ["retry_deployment", "stop_deployment"]
DELETES = ["delete_deployment_for_device_class_subgroup", "delete_deployment",
           "delete_device_class_subgroup", "delete_group", "delete_device_class",
           "begin_delete_update"]


def phase(name):
    if name in CREATES:
        return (0, CREATES.index(name))
    if name in ACTIONS:
        return (2, ACTIONS.index(name))
    if name in DELETES:
        return (3, DELETES.index(name))
    return (1, 0)


def arguments(fixture):
    """Values by parameter name, from the fixture."""
    u = fixture["update"]
    return {
        "group_id": fixture["groupId"],
        "device_class_id": fixture["deviceClassId"],
        "device_id": fixture["deviceId"],
        "module_id": fixture["moduleId"],
        "deployment_id": fixture["deploymentId"],
        "provider": u["provider"], "name": u["name"], "version": u["version"],
        "file_id": "unknown-file",
        "operation_id": "unknown-operation",
        "log_collection_id": fixture["logCollectionId"],
        "import_type": "All",
        "update_to_import": fixture["importBody"],
        "device_class_patch": {"friendlyName": "coverage"},
        "deployment": {
            "deploymentId": fixture["deploymentId"], "groupId": fixture["groupId"],
            "startDateTime": "2026-01-01T00:00:00Z", "update": {"updateId": u},
        },
        "log_collection": {
            "operationId": fixture["logCollectionId"],
            "deviceList": [{"deviceId": fixture["deviceId"]}],
            "description": "coverage",
        },
        # The one required filter (device health).
        "filter": "state eq 'unhealthy'",
    }


def call(fn, name, values):
    args, kwargs = [], {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind == p.VAR_KEYWORD:
            continue
        if p.default is not p.empty:
            continue  # optional: left to the SDK's default
        if p.name not in values:
            raise RuntimeError(f"{name}: no fixture value for parameter `{p.name}`")
        if p.kind == p.KEYWORD_ONLY:
            kwargs[p.name] = values[p.name]
        else:
            args.append(values[p.name])
    if name.startswith("begin_"):
        kwargs["polling"] = False
    try:
        result = fn(*args, **kwargs)
        if hasattr(result, "by_page"):
            next(iter(result.by_page()), None)
        return "ok"
    except HttpResponseError as e:
        return f"HTTP {e.status_code}"


def main():
    endpoint, instance, token, api_version, fixture_file = sys.argv[1:6]
    with open(fixture_file) as f:
        fixture = json.load(f)
    routes = builders()
    log = []
    client = DeviceUpdateClient(
        endpoint=endpoint, instance_id=instance, credential=Unused(),
        authentication_policy=Recorder(token, log), api_version=api_version, retry_total=0,
    )
    # The api-version must be accepted, or every route would answer 400 before routing.
    list(client.device_update.list_providers())
    operations = []
    for group in ("device_update", "device_management"):
        for name, fn in inspect.getmembers(getattr(client, group), inspect.ismethod):
            if not name.startswith("_"):
                operations.append((phase(name), group, name, fn))
    operations.sort(key=lambda o: (o[0], o[1], o[2]))
    values = arguments(fixture)
    calls = {}
    for _, group, name, fn in operations:
        calls[f"{group}.{name}"] = call(fn, name, values)

    hits = {b: [] for b in routes}
    for entry in log:
        for b, (method, template) in routes.items():
            if entry["method"] == method and pattern(template, instance).match(entry["path"]):
                hits[b].append(entry)

    def missing(e):
        return (e["status"] == 404 and e["message"] == "no such route") or e["status"] == 405

    covered, gaps = [], []
    for b, (method, template) in sorted(routes.items()):
        seen = hits[b]
        if not seen:
            gaps.append({"builder": b, "method": method, "path": template, "why": "not exercised"})
        elif any(missing(e) for e in seen):
            e = next(e for e in seen if missing(e))
            gaps.append({"builder": b, "method": method, "path": template,
                         "why": f"{e['status']} {e['code']}: {e['message']}"})
        elif any(e["status"] >= 500 for e in seen):
            e = next(e for e in seen if e["status"] >= 500)
            gaps.append({"builder": b, "method": method, "path": template,
                         "why": f"broken: {e['status']} {e['code']}: {e['message']}"})
        else:
            covered.append(b)
    summary = f"{len(covered)}/{len(routes)}"
    print(json.dumps({
        "apiVersion": api_version,
        "total": len(routes),
        "covered": len(covered),
        "operations": len(operations),
        "missing": gaps,
        "calls": calls,
    }, indent=1))
    print(f"api-version {api_version}: {summary}", file=sys.stderr)
    for g in gaps:
        print(f"  missing {g['method']} {g['path']}: {g['why']}", file=sys.stderr)
    sys.exit(0 if len(covered) == len(routes) and len(operations) == len(routes) else 1)


if __name__ == "__main__":
    main()
