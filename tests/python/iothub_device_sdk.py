"""The official IoT Hub device SDK (azure-iot-device 2.14.0, unmodified) against otaforge
serve's MQTT endpoint, driven from the official service SDK (azure-iot-hub): a device and a
module connect with their connection strings (+ GatewayHostName) and serve's CA
(server_verification_cert), read their twin, receive a desired-property patch the service SDK
made, report properties the service SDK reads back, answer a direct method the service SDK
invokes, and send telemetry (which the Rust test then finds with `otaforge hub monitor`); the
device also receives a cloud-to-device message sent through serve's route (the service SDK
sends those over AMQP, which serve does not speak). Prints one JSON object of what it saw.

The service SDK always builds https:// URLs from the connection string's HostName; serve's
service API is plain HTTP on loopback, so the script points the SDK's HTTP client at http://.

usage: iothub_device_sdk.py SERVICE_CONNECTION_STRING HTTP_HOST:PORT CA_FILE GATEWAY_HOST
"""
import base64
import json
import os
import queue
import sys
import time
import urllib.request

from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient, Message, MethodResponse
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties
from msrest.exceptions import HttpOperationError

conn, http_host, ca_file, gateway = sys.argv[1:5]
conn = ";".join(p for p in conn.split(";") if not p.lower().startswith("usehttp"))
hub = dict(p.split("=", 1) for p in conn.split(";"))["HostName"]
registry = IoTHubRegistryManager.from_connection_string(conn)
registry.protocol.config.base_url = "http://" + http_host
ca = open(ca_file).read()
seen = {}

# Mixed case and a `*`: the SDK signs the SAS resource as it sends it.
DEVICE, MODULE = "Py-Dev*1", "Sensor-1"
key = lambda: base64.b64encode(os.urandom(32)).decode()
pk, sk, mpk, msk = key(), key(), key(), key()
made = registry.create_device_with_sas(DEVICE, pk, sk, "enabled")
seen["keptGivenKey"] = made.authentication.symmetric_key.primary_key == pk
registry.create_module_with_sas(DEVICE, MODULE, None, mpk, msk)
registry.create_device_with_sas("py-offline", key(), key(), "enabled")


def wait(q, what, timeout=15):
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise SystemExit(f"timed out waiting for {what}")


def exercise(client, name, twin_of, update_twin, invoke):
    """Twin read, desired patch received, report read back, method answered, telemetry."""
    patches, methods = queue.Queue(), queue.Queue()
    client.on_twin_desired_properties_patch_received = patches.put

    def on_method(req):
        methods.put(req.name)
        client.send_method_response(
            MethodResponse.create_from_method_request(req, 200, {"echo": req.payload, "by": name}))

    client.on_method_request_received = on_method
    client.connect()
    twin = client.get_twin()
    got = {"twinVersions": [twin["desired"]["$version"], twin["reported"]["$version"]]}
    update_twin(Twin(properties=TwinProperties(desired={"interval": 7, "mode": {"fast": True}})))
    # The SDK may first raise a whole-desired patch of its own (its "ensure desired
    # properties" GET after connecting): wait for the service's.
    patch = wait(patches, f"{name}'s desired patch")
    while "interval" not in patch:
        patch = wait(patches, f"{name}'s desired patch")
    got["patch"] = {k: v for k, v in patch.items() if k != "$version"}
    got["patchVersionNewer"] = patch["$version"] > twin["desired"]["$version"]
    client.patch_twin_reported_properties({"firmware": "1.2.3", "by": name})
    got["reportedByService"] = twin_of().properties.reported.get("firmware")
    result = invoke(CloudToDeviceMethod(method_name="reboot", payload={"delay": 2},
                                        response_timeout_in_seconds=10))
    got["method"] = {"status": result.status, "payload": result.payload, "name": wait(methods, "method")}
    client.send_message(Message(json.dumps({"temp": 21.5, "by": name}), content_encoding="utf-8",
                                content_type="application/json"))
    return got


device = IoTHubDeviceClient.create_from_connection_string(
    f"HostName={hub};DeviceId={DEVICE};SharedAccessKey={pk};GatewayHostName={gateway}",
    server_verification_cert=ca,
    product_info="dtmi:azure:iot:deviceUpdateModel;3",
)
c2d = queue.Queue()
device.on_message_received = c2d.put
seen["device"] = exercise(
    device, "device",
    lambda: registry.get_twin(DEVICE),
    lambda t: registry.update_twin(DEVICE, t),
    lambda m: registry.invoke_device_method(DEVICE, m),
)

req = urllib.request.Request(
    f"http://{http_host}/otaforge/devices/{urllib.parse.quote(DEVICE, safe='')}/messages/devicebound?color=blue",
    data=b"hello device", method="POST", headers={"Content-Type": "application/octet-stream"})
urllib.request.urlopen(req).read()
m = wait(c2d, "the cloud-to-device message")
seen["c2d"] = {"body": m.data.decode(), "color": m.custom_properties.get("color")}

module = IoTHubModuleClient.create_from_connection_string(
    f"HostName={hub};DeviceId={DEVICE};ModuleId={MODULE};SharedAccessKey={mpk};GatewayHostName={gateway}",
    server_verification_cert=ca,
)
seen["module"] = exercise(
    module, "module",
    lambda: registry.get_module_twin(DEVICE, MODULE),
    lambda t: registry.update_module_twin(DEVICE, MODULE, t),
    lambda m: registry.invoke_device_module_method(DEVICE, MODULE, m),
)

# A device that is not connected: 404 DeviceNotOnline.
try:
    registry.invoke_device_method("py-offline", CloudToDeviceMethod(method_name="x", payload=None))
    seen["offline"] = "answered"
except HttpOperationError as e:
    seen["offline"] = e.response.status_code

# The identity is connected once, and a second connection replaces the first.
seen["connectionState"] = registry.get_device(DEVICE).connection_state
for c in (device, module):
    c.shutdown()
print(json.dumps(seen))
