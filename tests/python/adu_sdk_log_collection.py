"""A log collection through the official Device Update SDK (`azure-iot-deviceupdate`) against
otaforge serve with simulated devices running: start_log_collection for DEVICES, then poll
get_log_collection_detailed_status until the collection is finished (Succeeded or Failed).

Usage: adu_sdk_log_collection.py ENDPOINT INSTANCE TOKEN ID DEVICE[,DEVICE...]
Prints one JSON object: the collection as created, and its last detailed status.
"""
import json
import sys
import time

from adu_sdk_compat import LoopbackStaticToken, Unused
from azure.iot.deviceupdate import DeviceUpdateClient


def main():
    endpoint, instance, token, log_id, devices = sys.argv[1:6]
    client = DeviceUpdateClient(
        endpoint=endpoint, instance_id=instance, credential=Unused(),
        authentication_policy=LoopbackStaticToken(token),
    )
    dm = client.device_management
    created = dm.start_log_collection(log_id, {
        "operationId": log_id,
        "deviceList": [{"deviceId": d} for d in devices.split(",")],
        "description": "sdk log collection",
    })
    end = time.time() + 60
    while True:
        status = dm.get_log_collection_detailed_status(log_id)
        if status["status"] in ("Succeeded", "Failed") or time.time() > end:
            break
        time.sleep(0.5)
    listed = [c["operationId"] for c in dm.list_log_collections()]
    print(json.dumps({"created": created, "status": status, "listed": listed}))


if __name__ == "__main__":
    main()
