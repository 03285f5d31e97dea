//! Channels (placeholder until the adapter lands: every call fails as
//! unavailable, which the engine reports; nothing here is called done).

use shoal_store::channels::{
    BlobWrite, ChannelInfo, ChannelRead, ChannelSettings, Channels, NewChannelMessage, Published,
};
use shoal_store::{Error, Pending};

use crate::RedisStore;

fn unavailable<T: Send + 'static>() -> Pending<T> {
    Box::pin(std::future::ready(Err(Error::Unavailable(
        "channels are not built for this store yet".into(),
    ))))
}

impl Channels for RedisStore {
    fn channel_configure(&self, _name: &str, _settings: ChannelSettings) -> Pending<()> {
        unavailable()
    }
    fn channel_settings(&self, _name: &str) -> Pending<Option<ChannelSettings>> {
        unavailable()
    }
    fn channel_publish(
        &self,
        _name: &str,
        _messages: Vec<NewChannelMessage>,
        _blob: Option<BlobWrite>,
        _now_ms: u64,
    ) -> Pending<Published> {
        unavailable()
    }
    fn channel_read(
        &self,
        _name: &str,
        _after: u64,
        _limit: usize,
        _now_ms: u64,
    ) -> Pending<ChannelRead> {
        unavailable()
    }
    fn channel_list(
        &self,
        _prefix: &str,
        _after: Option<&str>,
        _limit: usize,
    ) -> Pending<Vec<ChannelInfo>> {
        unavailable()
    }
    fn channel_wait(
        &self,
        _positions: Vec<(String, String, u64)>,
        _timeout_ms: u64,
    ) -> Option<Pending<Vec<(String, String, u64)>>> {
        None
    }
}
