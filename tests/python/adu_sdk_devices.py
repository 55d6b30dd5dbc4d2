"""Drives `otaforge serve`'s device management with the official Python SDK
`azure-iot-deviceupdate` (`DeviceUpdateClient.device_management`), with the SDK's defaults:
lists and reads groups, classes, devices and compliance, creates a deployment of the best
update of the class that has one to GROUP, reads its status and device states, retries and cancels it.

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
    # The class that has an update to deploy (the kettle class has none).
    deployable = next(c for c in classes if c.get("bestCompatibleUpdate"))
    best = deployable["bestCompatibleUpdate"]["updateId"]
    deployment = dm.create_or_update_deployment(group, "sdk-rollout", {
        "deploymentId": "sdk-rollout",
        "groupId": group,
        "startDateTime": "2026-11-29T00:00:00Z",
        "update": {"updateId": best},
    })
    status = dm.get_deployment_status(group, "sdk-rollout")
    subgroup = deployment["deviceClassSubgroups"][0]
    states = list(dm.list_device_states_for_device_class_subgroup_deployment(group, subgroup, "sdk-rollout"))
    retried = dm.retry_deployment(group, subgroup, "sdk-rollout")
    stopped = dm.stop_deployment(group, subgroup, "sdk-rollout")
    after = dm.get_deployment_status(group, "sdk-rollout")
    print(json.dumps({
        "deployment": deployment["deploymentId"],
        "deploymentState": status["deploymentState"],
        "deviceStates": sorted((s["deviceId"], s["deviceState"]) for s in states),
        "retried": retried.get("isRetried"),
        "canceled": stopped.get("isCanceled"),
        "afterCancel": after["deploymentState"],
        "groups": sorted(g["groupId"] for g in groups),
        "groupDevices": one["deviceCount"],
        "classes": len(classes),
        "bestUpdate": best,
        "devices": len(devices),
        "inGroup": sorted(d["deviceId"] for d in in_group),
        "compliance": dm.get_update_compliance(),
        "groupCompliance": dm.get_update_compliance_for_group(group),
    }))


if __name__ == "__main__":
    main()
