"""What an SDK never sends, against otaforge serve's MQTT endpoint: paho-mqtt 1.6.1 for valid
packets a device may not send, and hand-made packets over a raw TLS socket for malformed
ones. Each case must be refused (CONNACK code, SUBACK 0x80) or disconnected, with nothing
stored (twins and telemetry unchanged), while a well-behaved client keeps getting answers.
Prints one JSON object: each case's outcome, and the good client's slowest twin answer.

usage: mqtt_hostile.py SERVICE_CONNECTION_STRING HTTP_HOST:PORT CA_FILE MQTT_HOST MQTT_PORT
"""
import base64
import hashlib
import hmac
import json
import os
import socket
import ssl
import struct
import threading
import time
import urllib.parse
import urllib.request

import paho.mqtt.client as paho
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import Twin, TwinProperties

import sys

conn, http_host, ca_file, mqtt_host, mqtt_port = sys.argv[1:6]
mqtt_port = int(mqtt_port)
conn = ";".join(p for p in conn.split(";") if not p.lower().startswith("usehttp"))
hub = dict(p.split("=", 1) for p in conn.split(";"))["HostName"]
registry = IoTHubRegistryManager.from_connection_string(conn)
registry.protocol.config.base_url = "http://" + http_host
seen = {}

keys = {}
for d in ("h-1", "h-2", "h-good"):
    keys[d] = base64.b64encode(os.urandom(32)).decode()
    registry.create_device_with_sas(d, keys[d], base64.b64encode(os.urandom(32)).decode(), "enabled")


def sas(resource, key, expiry):
    sr = urllib.parse.quote(resource, safe="")
    sig = base64.b64encode(hmac.new(base64.b64decode(key), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest())
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}&se={expiry}"


def token(device, key=None, ttl=3600):
    return sas(f"{hub}/devices/{device}", key or keys[device], int(time.time()) + ttl)


def user(device):
    return f"{hub}/{device}/?api-version=2021-04-12"


# --- raw packets -------------------------------------------------------------------------
def enc_len(n):
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text):
    b = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(b)) + b


def pkt(first, body):
    return bytes([first]) + enc_len(len(body)) + body


def connect_packet(client_id, username, password, keepalive=60, clean=False, level=4):
    flags = 0xC0 | (0x02 if clean else 0)
    return pkt(0x10, s("MQTT") + bytes([level, flags]) + struct.pack(">H", keepalive) + s(client_id) + s(username) + s(password))


def publish_packet(topic, payload, qos=1, pid=1):
    body = s(topic) + (struct.pack(">H", pid) if qos else b"") + payload
    return pkt(0x30 | (qos << 1), body)


def subscribe_packet(pid, filters):
    return pkt(0x82, struct.pack(">H", pid) + b"".join(s(f) + b"\x01" for f in filters))


ctx = ssl.create_default_context(cafile=ca_file)


def tls(rcvbuf=None):
    raw = socket.socket()
    if rcvbuf:
        # Before connecting, so the window it offers stays small.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(15)
    raw.connect((mqtt_host, mqtt_port))
    return ctx.wrap_socket(raw, server_hostname=mqtt_host)


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_packet(sock, timeout=10):
    """(type, flags, body), or None when the server closed the connection."""
    sock.settimeout(timeout)
    try:
        head = read_exact(sock, 1)
        if head is None:
            return None
        mult, length = 1, 0
        while True:
            b = read_exact(sock, 1)[0]
            length += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        body = read_exact(sock, length) if length else b""
        return head[0] >> 4, head[0] & 0x0F, body
    except (ConnectionError, ssl.SSLError, OSError) as e:
        if isinstance(e, socket.timeout):
            raise
        return None


def closed(sock, timeout=15):
    """Whether the server closes `sock` within `timeout` (reading and dropping what comes)."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            if read_packet(sock, max(0.1, end - time.time())) is None:
                return True
        except socket.timeout:
            return False
    return False


def connack(client_id, username, password, rcvbuf=None, **kw):
    sock = tls(rcvbuf)
    sock.sendall(connect_packet(client_id, username, password, **kw))
    p = read_packet(sock)
    code = p[2][1] if p and p[0] == 2 else None
    return sock, code


def connected(device, **kw):
    sock, code = connack(device, user(device), token(device), **kw)
    assert code == 0, f"{device} could not connect: {code}"
    return sock


def twin_get(sock, rid):
    sock.sendall(publish_packet(f"$iothub/twin/GET/?$rid={rid}", b" ", qos=0))
    while True:
        p = read_packet(sock)
        if p is None:
            return None
        if p[0] == 3:
            tlen = struct.unpack(">H", p[2][:2])[0]
            topic = p[2][2:2 + tlen].decode()
            if topic.startswith("$iothub/twin/res/") and f"$rid={rid}" in topic:
                return topic


def events_last():
    with urllib.request.urlopen(f"http://{http_host}/otaforge/hub/events?after=0&limit=1") as r:
        return json.load(r)["last"]


# --- a well-behaved client throughout, timing its twin answers ----------------------------
good_times, stop = [], threading.Event()


def good_client():
    sock = connected("h-good")
    sock.sendall(subscribe_packet(1, ["$iothub/twin/res/#"]))
    read_packet(sock)
    i = 0
    while not stop.is_set():
        i += 1
        t = time.time()
        assert twin_get(sock, f"g{i}"), "the good client lost its connection"
        good_times.append(time.time() - t)
        time.sleep(0.2)
    sock.close()


good = threading.Thread(target=good_client)
good.start()
events_before = events_last()
reported_before = registry.get_twin("h-1").properties.reported

# 1. Credentials: another device's token, a wrong key, an expired token, garbage, no login.
cases = {
    "foreignSas": ("h-1", user("h-1"), token("h-2")),
    "wrongKey": ("h-1", user("h-1"), token("h-1", key=keys["h-2"])),
    "expired": ("h-1", user("h-1"), token("h-1", ttl=-10)),
    "garbagePassword": ("h-1", user("h-1"), "SharedAccessSignature nonsense"),
    "otherUser": ("h-1", user("h-2"), token("h-1")),
}
for name, (cid, u, pw) in cases.items():
    sock, code = connack(cid, u, pw)
    seen[name] = {"connack": code, "closed": closed(sock, 5)}
# 2. Protocol level 3 and 5: CONNACK 1; an empty client id: CONNACK 2.
for level in (3, 5):
    sock, code = connack("h-1", user("h-1"), token("h-1"), level=level)
    seen[f"level{level}"] = code
sock, code = connack("", user("h-1"), token("h-1"))
seen["emptyClientId"] = code

# 3. Subscriptions beyond its own topics: SUBACK 0x80, and nothing delivered.
sub_codes, messages = [], []
c = paho.Client(client_id="h-1", clean_session=False, protocol=paho.MQTTv311)
c.username_pw_set(user("h-1"), token("h-1"))
c.tls_set(ca_certs=ca_file)
c.on_subscribe = lambda cl, ud, mid, granted: sub_codes.extend(granted)
c.on_message = lambda cl, ud, msg: messages.append(msg.topic)
c.connect(mqtt_host, mqtt_port)
c.loop_start()
for f in ("#", "$iothub/#", "devices/+/messages/devicebound/#", "devices/h-2/messages/devicebound/#"):
    c.subscribe(f, qos=1)
time.sleep(1)
registry.update_twin("h-2", Twin(properties=TwinProperties(desired={"secret": 1})))
urllib.request.urlopen(urllib.request.Request(
    f"http://{http_host}/otaforge/devices/h-2/messages/devicebound", data=b"for h-2", method="POST",
    headers={"Content-Type": "application/octet-stream"})).read()
time.sleep(1.5)
seen["forbiddenSubscriptions"] = {"granted": sub_codes, "delivered": messages}
c.loop_stop()
c.disconnect()

# 4. Publishing where it may not: closed, nothing stored.
for name, topic, qos in (
    ("otherDevicesEvents", "devices/h-2/messages/events/", 1),
    ("desiredFromDevice", "$iothub/twin/PATCH/properties/desired/?$rid=1", 1),
    ("qos2", "devices/h-1/messages/events/", 2),
):
    sock = connected("h-1")
    sock.sendall(publish_packet(topic, b'{"evil": true}', qos=qos))
    seen[name] = closed(sock, 5)

# 5. Oversized: a header announcing 300 KiB, and 256 MiB; closed before the body comes.
for name, size in (("oversize300KiB", 300 * 1024), ("oversize256MiB", 256 * 1024 * 1024 - 1)):
    sock = connected("h-1")
    sock.sendall(bytes([0x30]) + enc_len(size) + b"\x00\x05abcde")
    seen[name] = closed(sock, 5)

# 6. Malformed: each closed.
topic_past_frame = pkt(0x30, struct.pack(">H", 500) + b"short")
bad_utf8 = pkt(0x30, s(b"devices/h-1/messages/events/\xff\xfe") + b"x")
malformed = {
    "fiveByteLength": bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
    "topicPastFrame": topic_past_frame,
    "invalidUtf8Topic": bad_utf8,
    "subscribeNoFilter": pkt(0x82, struct.pack(">H", 1)),
    "secondConnect": connect_packet("h-1", user("h-1"), token("h-1")),
    "type0": pkt(0x00, b"\x00"),
    "type15": pkt(0xF0, b"\x00"),
}
for name, data in malformed.items():
    sock = connected("h-1")
    sock.sendall(data)
    seen[name] = closed(sock, 5)
sock = tls()
sock.sendall(publish_packet("devices/h-1/messages/events/", b"x"))
seen["publishBeforeConnect"] = closed(sock, 5)
def raw_closed(sock, timeout):
    """Whether the server closes a plain socket within `timeout` (what it sends is dropped)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(1024):
            pass
        return True
    except ConnectionError:
        return True
    except socket.timeout:
        return False


raw = socket.create_connection((mqtt_host, mqtt_port))
raw.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)
seen["garbageInsteadOfTls"] = raw_closed(raw, 5)

# 11. Reported properties that are not JSON, or over 32 KB: 400, nothing stored.
sock = connected("h-1")
sock.sendall(subscribe_packet(1, ["$iothub/twin/res/#"]))
read_packet(sock)
answers = {}
for name, body in (("notJson", b"{nope"), ("over32KB", json.dumps({f"k{i}": "x" * 4000 for i in range(9)}).encode())):
    sock.sendall(publish_packet(f"$iothub/twin/PATCH/properties/reported/?$rid={name}", body, qos=0))
    p = read_packet(sock)
    tlen = struct.unpack(">H", p[2][:2])[0]
    answers[name] = p[2][2:2 + tlen].decode().split("/")[3]
seen["badReports"] = answers
sock.close()

# 8, 9, 12. Slow clients, silence and expiry, side by side: each closed by its deadline.
def timed(fn):
    t = time.time()
    ok = fn()
    return {"closed": ok, "after": round(time.time() - t)}


slow = {}
def tcp_only():
    return raw_closed(socket.create_connection((mqtt_host, mqtt_port)), 20)
def tls_no_connect():
    return closed(tls(), 20)
def drip_connect():
    sock = tls()
    for b in connect_packet("h-1", user("h-1"), token("h-1"))[:12]:
        sock.sendall(bytes([b]))
        time.sleep(1)
        try:
            sock.settimeout(0.01)
            if sock.recv(1) == b"":
                return True
        except socket.timeout:
            pass
        except (ConnectionError, ssl.SSLError):
            return True
    return closed(sock, 10)
def keepalive_2():
    sock, code = connack("h-2", user("h-2"), token("h-2"), keepalive=2)
    return code == 0 and closed(sock, 10)
def expires_in_3():
    sock, code = connack("h-2", user("h-2"), token("h-2", ttl=3))
    return code == 0 and closed(sock, 10)
threads = []
for name, fn in (("tcpOnly", tcp_only), ("tlsNoConnect", tls_no_connect), ("dripConnect", drip_connect)):
    t = threading.Thread(target=lambda n=name, f=fn: slow.__setitem__(n, timed(f)))
    t.start()
    threads.append(t)
slow["keepalive2"] = timed(keepalive_2)
slow["expiresIn3"] = timed(expires_in_3)
for t in threads:
    t.join()
seen["slow"] = slow

# 10. A second connection of the same identity closes the first; the second works.
first = connected("h-2")
second = connected("h-2")
second.sendall(subscribe_packet(1, ["$iothub/twin/res/#"]))
read_packet(second)
seen["secondConnection"] = {"firstClosed": closed(first, 5), "secondAnswers": twin_get(second, "s1") is not None}
second.close()

# 7. A client that never reads: closed, and the good client is not slowed.
lazy = connected("h-1", rcvbuf=4096)
lazy.sendall(subscribe_packet(1, ["$iothub/twin/PATCH/properties/desired/#"]))
read_packet(lazy)
t0, closed_after = time.time(), None
i = 0
while time.time() - t0 < 60:
    i += 1
    registry.update_twin("h-1", Twin(properties=TwinProperties(desired={f"k{j}": f"{i}" + "y" * 3500 for j in range(8)})))
    if registry.get_device("h-1").connection_state == "Disconnected":
        closed_after = round(time.time() - t0)
        break
seen["neverReads"] = {"closedAfter": closed_after}

stop.set()
good.join()
seen["goodClient"] = {"answers": len(good_times), "slowestSeconds": round(max(good_times), 2)}
seen["nothingStored"] = {
    "events": events_last() == events_before,
    "reported": registry.get_twin("h-1").properties.reported == reported_before,
}
print(json.dumps(seen))
