//! Blobs: not implemented on this store yet (being written); every call
//! answers `Unavailable`.

use shoal_store::{
    Applied, BlobFiles, BlobMeta, BlobOp, BlobPage, BlobRead, BlobUpload, Blobs, Created, Error,
    Pending,
};

use crate::RedisStore;

fn missing<T: Send + 'static>() -> Pending<T> {
    Box::pin(std::future::ready(Err(Error::Unavailable(
        "blobs are not implemented on this store yet".into(),
    ))))
}

impl Blobs for RedisStore {
    fn blob_upload(&self, _: &str) -> Pending<Box<dyn BlobUpload>> {
        missing()
    }
    fn blob_meta(&self, _: &str) -> Pending<Option<BlobMeta>> {
        missing()
    }
    fn blob_read(&self, _: &str, _: u64, _: u64) -> Pending<Option<BlobRead>> {
        missing()
    }
    fn blob_files(&self, _: &str, _: u64, _: u64) -> Option<Pending<Option<BlobFiles>>> {
        None
    }
    fn blob_delete(&self, _: &str) -> Pending<bool> {
        missing()
    }
    fn blob_list(&self, _: &str, _: Option<&str>, _: usize) -> Pending<BlobPage> {
        missing()
    }
    fn blob_create_fixed(&self, _: &str, _: u64, _: bool, _: u64) -> Pending<Created> {
        missing()
    }
    fn blob_apply(&self, _: &str, _: Vec<BlobOp>) -> Pending<Applied> {
        missing()
    }
    fn blob_sweep(&self, _: u64) -> Pending<u64> {
        missing()
    }
}
