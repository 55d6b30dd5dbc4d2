"""Drives `otaforge serve` with the official Python SDK `azure-iot-deviceupdate`, with the SDK's
own defaults (no api_version: 1.1.0 sends 2026-06-01).

Usage: adu_sdk_compat.py ENDPOINT INSTANCE TOKEN IMPORT_JSON

IMPORT_JSON is the import request body (a list of ImportUpdateInputItem) whose URLs point at
the service's blob store. The SDK always builds https://{endpoint}; otaforge serve listens on
plain HTTP on loopback, so a policy rewrites the scheme, and the same policy adds the static
bearer token (azure-core refuses to send bearer tokens over http itself).
"""
import json
import sys

from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.iot.deviceupdate import DeviceUpdateClient


class LoopbackStaticToken(SansIOHTTPPolicy):
    def __init__(self, token):
        self.token = token

    def on_request(self, request):
        req = request.http_request
        if req.url.startswith("https://"):
            rest = req.url[len("https://"):]
            host, sep, path = rest.partition("/")
            # The SDK percent-encodes the endpoint, so host:port arrives as host%3Aport.
            host = host.replace("%3a", ":").replace("%3A", ":")
            req.url = "http://" + host + sep + path
        req.headers["Authorization"] = "Bearer " + self.token


class Unused:
    def get_token(self, *scopes, **kwargs):
        raise RuntimeError("the static-token policy replaces the credential")


def main():
    endpoint, instance, token, import_json = sys.argv[1:5]
    client = DeviceUpdateClient(
        endpoint=endpoint,
        instance_id=instance,
        credential=Unused(),
        authentication_policy=LoopbackStaticToken(token),
    )
    body = json.load(open(import_json))
    poller = client.device_update.begin_import_update(body, polling_interval=1)
    poller.wait(timeout=120)
    ops = list(client.device_update.list_operation_statuses())
    assert ops, "no operations listed"
    op_id = ops[0]["operationId"]
    op = client.device_update.get_operation_status(op_id)
    assert op["status"] == "Succeeded", op
    uid = body[0]
    updates = list(client.device_update.list_updates())
    assert updates, "no updates listed"
    first = updates[0]["updateId"]
    got = client.device_update.get_update(first["provider"], first["name"], first["version"])
    assert got["updateId"] == first, got
    files = list(client.device_update.list_files(first["provider"], first["name"], first["version"]))
    for f in files:
        doc = client.device_update.get_file(first["provider"], first["name"], first["version"], f)
        assert doc["fileId"] == f and doc["sizeInBytes"] >= 0, doc
    providers = list(client.device_update.list_providers())
    assert first["provider"] in providers, providers
    deleter = client.device_update.begin_delete_update(
        first["provider"], first["name"], first["version"], polling_interval=1
    )
    deleter.wait(timeout=60)
    left = list(client.device_update.list_updates())
    print(json.dumps({"operation": op["status"], "updates": len(updates), "files": len(files), "left": len(left)}))


if __name__ == "__main__":
    main()
