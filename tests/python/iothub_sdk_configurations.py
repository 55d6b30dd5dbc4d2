"""The official IoT Hub service SDK (azure-iot-hub) against otaforge serve's IoT Hub surface:
configurations (create, list, get with metrics, update with the ETag, delete), twins (get,
update tags with the ETag, query), module twins (get, query) and set-modules
(apply_configuration_on_edge_device). Prints one JSON object of what it saw.

The SDK always builds https:// URLs from the connection string's HostName; serve speaks plain
HTTP on loopback, so the script points the SDK's HTTP client at http:// (its requests, SAS
tokens and documents are otherwise the SDK's own).

usage: iothub_sdk_configurations.py CONNECTION_STRING HOST:PORT
"""
import json
import sys
import time

from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
from azure.iot.hub.models import Configuration, ConfigurationContent, QuerySpecification, Twin

conn, host = sys.argv[1], sys.argv[2]
# Our connection string carries UseHttp=true, which the SDK does not know: drop it.
conn = ";".join(p for p in conn.split(";") if not p.lower().startswith("usehttp"))
configs = IoTHubConfigurationManager.from_connection_string(conn)
registry = IoTHubRegistryManager.from_connection_string(conn)
for client in (configs, registry):
    client.protocol.config.base_url = "http://" + host

seen = {}
base = {
    "$edgeAgent": {"properties.desired": {
        "schemaVersion": "1.1",
        "runtime": {"type": "docker", "settings": {}},
        "systemModules": {
            "edgeAgent": {"type": "docker", "settings": {"image": "mcr.microsoft.com/azureiotedge-agent:1.5"}},
            "edgeHub": {"type": "docker", "status": "running", "restartPolicy": "always",
                        "settings": {"image": "mcr.microsoft.com/azureiotedge-hub:1.5"}},
        },
        "modules": {"sensor": {"type": "docker", "status": "running", "restartPolicy": "always",
                               "settings": {"image": "contoso/sensor:1.0"}}},
    }},
    "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {
        "up": "FROM /messages/modules/sensor/outputs/* INTO $upstream"}}},
}

# Twins: tag the Edge devices through the SDK, with the ETag it read.
for device, env in (("gw-1", "prod"), ("gw-2", "prod"), ("gw-3", "test")):
    twin = registry.get_twin(device)
    registry.update_twin(device, Twin(tags={"environment": env}), twin.etag)
result = registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices WHERE tags.environment = 'prod'"))
seen["prodTwins"] = sorted(t.device_id for t in result.items)

c = Configuration(
    id="sdk-prod",
    schema_version="1.0",
    labels={"owner": "sdk"},
    content=ConfigurationContent(modules_content=base),
    target_condition="tags.environment='prod'",
    priority=10,
)
c.metrics = {"queries": {"prod": "SELECT deviceId FROM devices WHERE tags.environment = 'prod'"}}
made = configs.create_configuration(c)
seen["created"] = made.id
seen["createdEtag"] = bool(made.etag)
seen["listed"] = sorted(x.id for x in configs.get_configurations(max_count=10))
# IoT Hub applies a deployment in a pass after it is created (serve: within a second), as a
# user of the SDK waits for the applied count.
deadline = time.monotonic() + 20
while True:
    got = configs.get_configuration("sdk-prod")
    if got.system_metrics.results.get("appliedCount") == 2 or time.monotonic() > deadline:
        break
    time.sleep(0.2)
# The SDK's Twin model has no `configurations`; the query filters on it on the hub.
agent = registry.get_module_twin("gw-1", "$edgeAgent")
seen["agentModules"] = sorted(agent.properties.desired["modules"])
agents = registry.query_iot_hub(QuerySpecification(
    query="SELECT * FROM devices.modules WHERE moduleId = '$edgeAgent' AND configurations.[[sdk-prod]].status = 'Applied'"))
seen["appliedAgents"] = sorted(t.device_id for t in agents.items)
seen["targeted"] = got.system_metrics.results.get("targetedCount")
seen["applied"] = got.system_metrics.results.get("appliedCount")
seen["customProd"] = got.metrics.results.get("prod")
got.priority = 20
got.target_condition = "tags.environment='test'"
updated = configs.update_configuration(got, got.etag)
seen["updatedPriority"] = updated.priority
seen["targetedAfterUpdate"] = configs.get_configuration("sdk-prod").system_metrics.results.get("targetedCount")
configs.delete_configuration("sdk-prod")
# set-modules on a device no deployment manages any more.
mine = json.loads(json.dumps(base))
mine["$edgeAgent"]["properties.desired"]["modules"]["mine"] = mine["$edgeAgent"]["properties.desired"]["modules"].pop("sensor")
mine["$edgeHub"]["properties.desired"]["routes"] = {}
configs.apply_configuration_on_edge_device("gw-3", ConfigurationContent(modules_content=mine))
seen["setModules"] = sorted(registry.get_module_twin("gw-3", "$edgeAgent").properties.desired["modules"])
seen["afterDelete"] = [x.id for x in configs.get_configurations(max_count=10)]
print(json.dumps(seen))
