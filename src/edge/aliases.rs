//! Topic aliases both ways (5.0 §3.3.2.3.4): the ones a client sets towards us, and the ones we
//! set towards it, up to its Topic Alias Maximum.

use std::collections::HashMap;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Publish, PublishProperties};

/// One connection's topic aliases: the tables are allocated when the first alias is set (most
/// connections never set one, and every connection's state is held for its whole life).
pub(super) struct Aliases {
    tables: Option<Box<Tables>>,
    client_max: u16,
}

#[derive(Default)]
struct Tables {
    /// Topic aliases the client set towards us.
    inbound: HashMap<u16, Bytes>,
    /// Topic aliases we set towards the client, up to its Topic Alias Maximum.
    outbound: HashMap<Bytes, u16>,
}

impl Aliases {
    /// No aliases yet; the client accepts up to `client_max` from us.
    pub(super) fn new(client_max: u16) -> Aliases {
        Aliases {
            tables: None,
            client_max,
        }
    }

    fn tables(&mut self) -> &mut Tables {
        self.tables.get_or_insert_with(Box::default)
    }

    /// Whether the client accepts topic aliases from us at all.
    pub(super) fn outbound_enabled(&self) -> bool {
        self.client_max > 0
    }

    /// Applies an inbound topic alias (up to `server_max`, the maximum we advertised): sets it
    /// when a topic comes with it, looks it up when the topic is empty.
    pub(super) fn resolve(
        &mut self,
        topic: Bytes,
        properties: Option<&mut PublishProperties>,
        server_max: u16,
    ) -> Result<Bytes, DisconnectReasonCode> {
        let alias = properties.and_then(|p| p.topic_alias.take());
        match alias {
            None if topic.is_empty() => Err(DisconnectReasonCode::ProtocolError),
            None => Ok(topic),
            Some(a) if a == 0 || a > server_max => Err(DisconnectReasonCode::TopicAliasInvalid),
            Some(a) if topic.is_empty() => self
                .tables
                .as_ref()
                .and_then(|t| t.inbound.get(&a))
                .cloned()
                .ok_or(DisconnectReasonCode::ProtocolError),
            Some(a) => {
                self.tables().inbound.insert(a, topic.clone());
                Ok(topic)
            }
        }
    }

    /// Outbound topic aliases: the first time a topic is sent it gets the next free alias; later
    /// messages on it carry only the alias. Once the client's maximum is used up, new topics go
    /// out in full.
    pub(super) fn apply_out(&mut self, publish: &mut Publish) {
        let client_max = usize::from(self.client_max);
        let outbound = &mut self.tables().outbound;
        let alias = match outbound.get(&publish.topic) {
            Some(&a) => {
                publish.topic = Bytes::new();
                a
            }
            None if outbound.len() < client_max => {
                let a = outbound.len() as u16 + 1;
                outbound.insert(publish.topic.clone(), a);
                a
            }
            None => return,
        };
        publish
            .properties
            .get_or_insert_with(PublishProperties::default)
            .topic_alias = Some(alias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::QoS;

    fn with_alias(alias: u16) -> PublishProperties {
        PublishProperties {
            topic_alias: Some(alias),
            ..Default::default()
        }
    }

    #[test]
    fn inbound_aliases_are_set_then_looked_up() {
        let mut a = Aliases::new(0);
        let topic = Bytes::from_static(b"a/b");
        let set = a.resolve(topic.clone(), Some(&mut with_alias(3)), 10);
        assert_eq!(set, Ok(topic.clone()));
        let used = a.resolve(Bytes::new(), Some(&mut with_alias(3)), 10);
        assert_eq!(used, Ok(topic));
        let cases = [
            (Bytes::new(), None, DisconnectReasonCode::ProtocolError),
            (Bytes::new(), Some(4), DisconnectReasonCode::ProtocolError),
            (
                Bytes::from_static(b"x"),
                Some(0),
                DisconnectReasonCode::TopicAliasInvalid,
            ),
            (
                Bytes::from_static(b"x"),
                Some(11),
                DisconnectReasonCode::TopicAliasInvalid,
            ),
        ];
        for (topic, alias, reason) in cases {
            let mut props = alias.map(with_alias);
            assert_eq!(
                a.resolve(topic, props.as_mut(), 10),
                Err(reason),
                "{alias:?}"
            );
        }
    }

    #[test]
    fn outbound_aliases_stop_at_the_clients_maximum() {
        let mut a = Aliases::new(1);
        let publish = |topic: &'static str| Publish::new(topic, QoS::AtMostOnce, "x", None);
        let mut first = publish("a");
        a.apply_out(&mut first);
        assert_eq!(first.topic, "a");
        assert_eq!(first.properties.and_then(|p| p.topic_alias), Some(1));
        let mut again = publish("a");
        a.apply_out(&mut again);
        assert!(again.topic.is_empty());
        assert_eq!(again.properties.and_then(|p| p.topic_alias), Some(1));
        let mut other = publish("b");
        a.apply_out(&mut other);
        assert_eq!(other.topic, "b");
        assert!(other.properties.is_none());
    }
}
