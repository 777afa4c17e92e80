//! A CONNECT's will: checked like a PUBLISH (topic name, payload format, authorization; plain
//! topics only) and turned into the router's `Will`.

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, LastWill, PublishProperties};

use super::Shared;
use crate::access::{Identity, Route};
use crate::router::{Message, Will};
use crate::topics;

/// Checks a will like a PUBLISH and turns it into a message.
pub(super) fn will_message(
    shared: &Shared,
    identity: &Identity,
    w: LastWill,
) -> Result<Will, ConnectReturnCode> {
    let topic = std::str::from_utf8(&w.topic).map_err(|_| ConnectReturnCode::TopicNameInvalid)?;
    topics::validate_name(topic, &shared.limits.topics)
        .map_err(|_| ConnectReturnCode::TopicNameInvalid)?;
    // Wills go to plain topics only: a chat message is never sent on a client's behalf.
    match shared.access.authorize_publish(identity, topic) {
        Ok(Route::Plain) => {}
        Ok(_) | Err(_) => {
            tracing::info!(client = %identity.client_id, topic, "will refused");
            return Err(ConnectReturnCode::NotAuthorized);
        }
    }
    let p = w.properties;
    let delay_secs = p.as_ref().and_then(|p| p.delay_interval).unwrap_or(0);
    let expiry = p.as_ref().and_then(|p| p.message_expiry_interval);
    if p.as_ref().and_then(|p| p.payload_format_indicator) == Some(1)
        && std::str::from_utf8(&w.message).is_err()
    {
        return Err(ConnectReturnCode::PayloadFormatInvalid);
    }
    let properties = p.map(|p| PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: p.content_type,
    });
    Ok(Will {
        delay_secs,
        message: Message {
            topic: w.topic,
            payload: w.message,
            qos: w.qos,
            retain: w.retain,
            properties: properties.map(Box::new),
            // A will's expiry counts from its publication; the router stamps that moment.
            expires_at: None,
            origin: Some(identity.client_id.clone()),
            msgpack: None,
            chat: None,
        },
        expiry_secs: expiry,
    })
}
