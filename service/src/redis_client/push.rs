//! Where push messages (pub/sub messages, disconnections) go.

use redis::PushInfo;

/// Called on the connection's own task for each push, so it must not
/// block.
pub type PushHandler = std::sync::Arc<dyn Fn(PushInfo) + Send + Sync>;

/// The redis crate's push sender for a handler.
pub fn push_sender(handler: PushHandler) -> impl redis::aio::AsyncPushSender {
    move |info: PushInfo| {
        handler(info);
        Ok::<(), std::convert::Infallible>(())
    }
}
