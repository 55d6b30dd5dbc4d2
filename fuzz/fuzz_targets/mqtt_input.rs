//! What reaches serve's MQTT endpoint from the network: bytes framed into MQTT 3.1.1 packets
//! by the codec serve uses (rumqttc's `mqttbytes::v4`, with serve's size limit), and the text
//! inside them read as IoT Hub reads it — client ids, user names, SAS passwords, the topics a
//! device publishes to, the filters it subscribes to, property bags — plus the topics a device
//! reads from the hub. Everything is accepted or refused, never a panic; what parses formats
//! back to itself; a random token never verifies.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use otaforge::iothub::limits::MAX_MQTT_PACKET;
use otaforge::iothub::mqtt::{Filter, Identity, Inbound, Outbound, Username, format_bag, parse_bag};
use otaforge::iothub::sas::{Claims, SasKey};
use rumqttc::mqttbytes::v4::Packet;

fn text(who: &Identity, s: &str) {
    if let Ok(i) = Identity::parse(s) {
        assert_eq!(Identity::parse(&i.key()).as_ref(), Ok(&i), "a client id reads back");
    }
    if let Ok(u) = Username::parse(s) {
        let again = Username::format(&u.hub, &u.identity, u.model_id.as_deref());
        assert_eq!(Username::parse(&again).map(|v| v.identity), Ok(u.identity));
    }
    if let Ok(Inbound::Telemetry { properties }) = Inbound::parse(s, who) {
        assert!(properties.len() <= otaforge::iothub::mqtt::MAX_PROPERTIES);
    }
    if let Some(f) = Filter::parse(s, who) {
        assert_eq!(f.text(who), s, "only the exact filters are allowed");
    }
    if let Ok(bag) = parse_bag(s) {
        assert_eq!(parse_bag(&format_bag(&bag)).as_ref(), Ok(&bag), "a bag reads back");
    }
    let _ = Outbound::parse(s);
    if let Ok(c) = Claims::parse(s) {
        let key = SasKey::from_base64("a2V5LWZvci10aGUtZnV6ei10YXJnZXQ=").expect("fixed key");
        assert!(c.verify(&key, 0).is_err(), "a random token verified");
    }
}

fuzz_target!(|data: &[u8]| {
    let who = Identity::device("dev-1");
    let module = Identity::parse("dev-1/m1").expect("a module id");
    let mut buf = BytesMut::from(data);
    // At most as many packets as the input can hold (each takes two bytes or more).
    for _ in 0..data.len() / 2 + 1 {
        let Ok(p) = Packet::read(&mut buf, MAX_MQTT_PACKET) else { break };
        match p {
            Packet::Connect(c) => {
                text(&who, &c.client_id);
                if let Some(l) = &c.login {
                    text(&who, &l.username);
                    text(&who, &l.password);
                }
            }
            Packet::Publish(p) => {
                assert!(p.payload.len() <= MAX_MQTT_PACKET);
                text(&who, &p.topic);
                text(&module, &p.topic);
            }
            Packet::Subscribe(s) => s.filters.iter().for_each(|f| text(&module, &f.path)),
            Packet::Unsubscribe(u) => u.topics.iter().for_each(|t| text(&who, t)),
            _ => {}
        }
    }
    let s = String::from_utf8_lossy(data);
    text(&who, &s);
    text(&module, &s);
});
