"""Reads `otaforge serve`'s device management with the official Python SDK
`azure-iot-deviceupdate` (`DeviceUpdateClient.device_management`), with the SDK's defaults.

Usage: adu_sdk_devices.py ENDPOINT INSTANCE TOKEN GROUP

Prints one JSON object: what the SDK listed and read, for the Rust test to compare.
"""
import json
import sys

from adu_sdk_compat import LoopbackStaticToken, Unused
from azure.iot.deviceupdate import DeviceUpdateClient


def main():
    endpoint, instance, token, group = sys.argv[1:5]
    client = DeviceUpdateClient(
        endpoint=endpoint,
        instance_id=instance,
        credential=Unused(),
        authentication_policy=LoopbackStaticToken(token),
    )
    dm = client.device_management
    groups = list(dm.list_groups())
    one = dm.get_group(group)
    assert one["groupId"] == group, one
    classes = list(dm.list_device_classes())
    cls = dm.get_device_class(classes[0]["deviceClassId"])
    assert cls["deviceClassId"] == classes[0]["deviceClassId"], cls
    devices = list(dm.list_devices())
    in_group = list(dm.list_devices(filter=f"groupId eq '{group}'"))
    device = dm.get_device(in_group[0]["deviceId"])
    assert device["groupId"] == group, device
    print(json.dumps({
        "groups": sorted(g["groupId"] for g in groups),
        "groupDevices": one["deviceCount"],
        "classes": len(classes),
        "bestUpdate": cls.get("bestCompatibleUpdate", {}).get("updateId"),
        "devices": len(devices),
        "inGroup": sorted(d["deviceId"] for d in in_group),
        "compliance": dm.get_update_compliance(),
        "groupCompliance": dm.get_update_compliance_for_group(group),
    }))


if __name__ == "__main__":
    main()
