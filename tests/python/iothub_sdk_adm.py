"""Automatic device management on otaforge serve, driven by the official IoT Hub service SDK
(azure-iot-hub): configurations with `content.deviceContent` set the desired properties of the
device twins they win, a higher-priority one takes a path over, a retargeted one gives its
paths back to the next in line, and a deleted one's paths are removed (a property the user
set stays). Metrics are read back through the SDK.

Devices d1, d2 (tags.env = 'prod') and d3 (tags.env = 'test') exist; d1 has a desired
property `mine` the user set.

usage: iothub_sdk_adm.py CONNECTION_STRING HOST:PORT
Prints one JSON object of what the twins and metrics said at each step.
"""
import json
import sys
import time

from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
from azure.iot.hub.models import Configuration, ConfigurationContent

conn, host = sys.argv[1], sys.argv[2]
conn = ";".join(p for p in conn.split(";") if not p.lower().startswith("usehttp"))
configs = IoTHubConfigurationManager.from_connection_string(conn)
registry = IoTHubRegistryManager.from_connection_string(conn)
for client in (configs, registry):
    client.protocol.config.base_url = "http://" + host


def desired(device):
    d = dict(registry.get_twin(device).properties.desired or {})
    return {k: v for k, v in d.items() if not k.startswith("$")}


def until(what, check, timeout=20):
    """Polls `check` until it returns a truthy value (serve's pass runs within a second)."""
    end = time.time() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.time() > end:
            raise AssertionError(f"waited {timeout}s for {what}")
        time.sleep(0.2)


def metrics(config_id):
    c = configs.get_configuration(config_id)
    return c.system_metrics.results


seen = {}
low = Configuration(
    id="chiller-low",
    schema_version="1.0",
    content=ConfigurationContent(device_content={
        "properties.desired.chiller": {"temperature": 38, "pressure": 78},
        "properties.desired.fan.speed": 1,
    }),
    target_condition="tags.env='prod'",
    priority=1,
)
configs.create_configuration(low)
until("chiller-low on d1 and d2", lambda: all("chiller" in desired(d) for d in ("d1", "d2")))
seen["low"] = {d: desired(d) for d in ("d1", "d2", "d3")}
seen["lowMetrics"] = until("metrics", lambda: metrics("chiller-low").get("appliedCount") == 2 and metrics("chiller-low"))

high = Configuration(
    id="chiller-high",
    schema_version="1.0",
    content=ConfigurationContent(device_content={"properties.desired.chiller": {"temperature": 42}}),
    target_condition="deviceId='d2'",
    priority=10,
)
configs.create_configuration(high)
until("chiller-high on d2", lambda: desired("d2").get("chiller") == {"temperature": 42})
seen["high"] = {d: desired(d) for d in ("d1", "d2", "d3")}
seen["highMetrics"] = metrics("chiller-high")
seen["lowMetricsUnderHigh"] = metrics("chiller-low")

# Retarget the higher one: d2 falls back to chiller-low, d3 gets chiller-high.
current = configs.get_configuration("chiller-high")
current.target_condition = "deviceId='d3'"
configs.update_configuration(current, current.etag)
until("chiller-high on d3", lambda: desired("d3").get("chiller") == {"temperature": 42})
until("d2 back on chiller-low", lambda: desired("d2").get("chiller", {}).get("temperature") == 38)
seen["retargeted"] = {d: desired(d) for d in ("d1", "d2", "d3")}

# Delete the lower one: its paths leave d1 and d2; d1's own property stays.
configs.delete_configuration("chiller-low")
until("chiller-low gone", lambda: "chiller" not in desired("d1") and "chiller" not in desired("d2"))
seen["deleted"] = {d: desired(d) for d in ("d1", "d2", "d3")}
seen["listed"] = sorted(c.id for c in configs.get_configurations(10))
print(json.dumps(seen))
