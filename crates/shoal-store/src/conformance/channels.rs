//! Channel cases: offsets 1, 2, 3, ... across batches under one epoch,
//! reads after an offset that answer a whole run or say there is a gap
//! (history length, age at the reader's clock, an offset past the head),
//! settings and their effect on the kept messages, listing by prefix, and
//! publishes with bitfield operations on a fixed-size blob that store both
//! or neither.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;

use crate::Backend;
use crate::{
    Applied, BitType, BlobOp, BlobWrite, ChannelInfo, ChannelMessage, ChannelRead, ChannelSettings,
    Created, NewChannelMessage, Overflow, Published,
};

use super::{T, unique};

fn json(text: &str) -> NewChannelMessage {
    NewChannelMessage {
        binary: false,
        data: text.as_bytes().to_vec(),
    }
}

fn jsons(texts: &[&str]) -> Vec<NewChannelMessage> {
    texts.iter().map(|t| json(t)).collect()
}

/// Publishes without a blob, answering `(epoch, first, last)`.
async fn publish(
    b: &Backend,
    name: &str,
    messages: Vec<NewChannelMessage>,
    now_ms: u64,
) -> (String, u64, u64) {
    match b
        .channels
        .channel_publish(name, messages, None, now_ms)
        .await
        .expect("channel_publish")
    {
        Published::Done {
            epoch,
            first,
            last,
            applied: None,
        } => (epoch, first, last),
        other => panic!("publish without a blob: {other:?}"),
    }
}

async fn read(b: &Backend, name: &str, after: u64, limit: usize, now_ms: u64) -> ChannelRead {
    b.channels
        .channel_read(name, after, limit, now_ms)
        .await
        .expect("channel_read")
}

fn offsets(read: &ChannelRead) -> Vec<u64> {
    read.messages.iter().map(|m| m.offset).collect()
}

fn settings(history_len: u64, history_age_ms: u64) -> ChannelSettings {
    ChannelSettings {
        public: true,
        history_len,
        history_age_ms,
        coalesce_ms: 25,
    }
}

/// Offsets count from 1 and go on across batches and channels' own
/// histories; the epoch is made by the first message and stays; reads
/// answer consecutive runs after the asked offset, at most the limit.
pub async fn channel_offsets_and_epoch(backend: &Backend) {
    let name = unique("ch.offsets");
    let empty = read(backend, &name, 0, 10, T).await;
    assert_eq!(
        empty,
        ChannelRead {
            epoch: String::new(),
            head: 0,
            messages: vec![],
            gap: false,
        }
    );
    assert!(
        read(backend, &name, 3, 10, T).await.gap,
        "past the head of an unknown channel"
    );
    assert_eq!(
        backend.channels.channel_settings(&name).await.unwrap(),
        None
    );

    let (epoch, first, last) =
        publish(backend, &name, jsons(&["1", "{\"a\":2}", "\"three\""]), T).await;
    assert!(!epoch.is_empty());
    assert_eq!((first, last), (1, 3));
    let (again, first, last) = publish(backend, &name, jsons(&["4", "5"]), T + 1).await;
    assert_eq!(again, epoch, "one history, one epoch");
    assert_eq!((first, last), (4, 5));
    let (again, first, last) = publish(backend, &name, jsons(&["6"]), T + 2).await;
    assert_eq!((again.as_str(), first, last), (epoch.as_str(), 6, 6));

    let all = read(backend, &name, 0, 100, T + 3).await;
    assert_eq!(
        (all.epoch.as_str(), all.head, all.gap),
        (epoch.as_str(), 6, false)
    );
    assert_eq!(
        all.messages[..3],
        [
            ChannelMessage {
                offset: 1,
                at_ms: T,
                binary: false,
                data: b"1".to_vec()
            },
            ChannelMessage {
                offset: 2,
                at_ms: T,
                binary: false,
                data: b"{\"a\":2}".to_vec()
            },
            ChannelMessage {
                offset: 3,
                at_ms: T,
                binary: false,
                data: b"\"three\"".to_vec()
            },
        ]
    );
    assert_eq!(offsets(&all), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(all.messages[3].at_ms, T + 1);
    assert_eq!(all.messages[5].data, b"6");

    // Any limit is fine (at least one message is answered).
    assert_eq!(read(backend, &name, 0, usize::MAX, T + 3).await, all);
    assert_eq!(offsets(&read(backend, &name, 0, 0, T + 3).await), vec![1]);
    let page = read(backend, &name, 2, 2, T + 3).await;
    assert_eq!(offsets(&page), vec![3, 4]);
    assert!(!page.gap && page.head == 6);
    let page = read(backend, &name, 4, 10, T + 3).await;
    assert_eq!(offsets(&page), vec![5, 6]);
    let at_head = read(backend, &name, 6, 10, T + 3).await;
    assert!(at_head.messages.is_empty() && !at_head.gap);
    assert_eq!((at_head.epoch.as_str(), at_head.head), (epoch.as_str(), 6));
    let past = read(backend, &name, 7, 10, T + 3).await;
    assert!(
        past.gap && past.messages.is_empty(),
        "an offset past the head is a gap"
    );
    assert_eq!((past.epoch.as_str(), past.head), (epoch.as_str(), 6));

    // The position alone: after the last possible offset.
    let position = read(backend, &name, u64::MAX, 1, T + 3).await;
    assert_eq!(
        (position.epoch.as_str(), position.head, position.gap),
        (epoch.as_str(), 6, true)
    );
    assert!(position.messages.is_empty());
    let unknown = read(backend, &unique("ch.offsets"), u64::MAX, 1, T).await;
    assert_eq!((unknown.epoch.as_str(), unknown.head), ("", 0));

    // Another channel has its own offsets.
    let other = unique("ch.offsets");
    let (_, first, last) = publish(backend, &other, jsons(&["x"]), T).await;
    assert_eq!((first, last), (1, 1));
    assert_eq!(read(backend, &name, 0, 100, T + 3).await.head, 6);
}

/// Concurrent publishes get disjoint runs that together are 1..=N, each
/// run's messages in their order.
pub async fn channel_concurrent_publishes(backend: &Backend) {
    let name = unique("ch.concurrent");
    let publishes = (0..24).map(|i| {
        let messages = (0..(i % 3 + 1))
            .map(|j| json(&format!("[{i},{j}]")))
            .collect();
        backend.channels.channel_publish(&name, messages, None, T)
    });
    let mut runs = Vec::new();
    let mut epochs = Vec::new();
    for (i, done) in join_all(publishes).await.into_iter().enumerate() {
        match done.expect("publish") {
            Published::Done {
                epoch, first, last, ..
            } => {
                assert_eq!(last - first + 1, (i % 3 + 1) as u64);
                runs.push((first, last, i));
                epochs.push(epoch);
            }
            other => panic!("{other:?}"),
        }
    }
    epochs.dedup();
    assert_eq!(epochs.len(), 1, "one epoch for all: {epochs:?}");
    runs.sort();
    let mut next = 1;
    for &(first, last, _) in &runs {
        assert_eq!(first, next, "runs {runs:?}");
        next = last + 1;
    }
    let all = read(backend, &name, 0, 1000, T).await;
    assert_eq!(all.head, next - 1);
    assert_eq!(offsets(&all), (1..next).collect::<Vec<_>>());
    for &(first, last, i) in &runs {
        for (j, offset) in (first..=last).enumerate() {
            let data = &all.messages[offset as usize - 1].data;
            assert_eq!(data, format!("[{i},{j}]").as_bytes());
        }
    }
}

/// Messages beyond `history_len` or older than `history_age_ms` (at the
/// reader's clock) leave the history: a read that would need one is a
/// gap, and answers no message.
pub async fn channel_history_bounds(backend: &Backend) {
    let name = unique("ch.bounds");
    backend
        .channels
        .channel_configure(&name, settings(3, 1000))
        .await
        .unwrap();
    let (epoch, ..) = publish(backend, &name, jsons(&["1", "2", "3", "4"]), T).await;
    publish(backend, &name, jsons(&["5"]), T + 500).await;
    // Length: 3 kept (3, 4, 5).
    for after in [0, 1] {
        let r = read(backend, &name, after, 10, T + 1).await;
        assert!(r.gap && r.messages.is_empty(), "after {after}: {r:?}");
        assert_eq!((r.epoch.as_str(), r.head), (epoch.as_str(), 5));
    }
    assert_eq!(
        offsets(&read(backend, &name, 2, 10, T + 1).await),
        vec![3, 4, 5]
    );
    assert_eq!(offsets(&read(backend, &name, 3, 1, T + 1).await), vec![4]);
    // Age: 3 and 4 were stored at T, 5 at T + 500; at T + 1000 the first
    // two are a whole age old.
    assert_eq!(
        offsets(&read(backend, &name, 2, 10, T + 999).await),
        vec![3, 4, 5]
    );
    let r = read(backend, &name, 2, 10, T + 1000).await;
    assert!(r.gap && r.messages.is_empty(), "{r:?}");
    assert!(read(backend, &name, 3, 10, T + 1000).await.gap);
    assert_eq!(
        offsets(&read(backend, &name, 4, 10, T + 1000).await),
        vec![5]
    );
    // All gone: at the head there is nothing missing.
    let r = read(backend, &name, 5, 10, T + 5000).await;
    assert!(!r.gap && r.messages.is_empty());
    assert!(read(backend, &name, 4, 10, T + 5000).await.gap);
    assert!(read(backend, &name, 6, 10, T + 5000).await.gap);
    // Publishing again goes on from the head, under the same epoch.
    let (again, first, _) = publish(backend, &name, jsons(&["6"]), T + 5000).await;
    assert_eq!((again.as_str(), first), (epoch.as_str(), 6));
    assert_eq!(
        offsets(&read(backend, &name, 5, 10, T + 5000).await),
        vec![6]
    );

    // No age bound.
    let forever = unique("ch.bounds");
    backend
        .channels
        .channel_configure(&forever, settings(2, 0))
        .await
        .unwrap();
    publish(backend, &forever, jsons(&["1", "2"]), 5).await;
    assert_eq!(
        offsets(&read(backend, &forever, 0, 10, u64::MAX / 2).await),
        vec![1, 2]
    );
    // Default settings keep a day.
    let default = unique("ch.bounds");
    publish(backend, &default, jsons(&["1"]), T).await;
    assert_eq!(
        offsets(&read(backend, &default, 0, 10, T + 86_399_999).await),
        vec![1]
    );
    assert!(read(backend, &default, 0, 10, T + 86_400_000).await.gap);
}

/// Settings round trip; a channel configured but never published on has
/// no epoch; shorter bounds apply to the messages already kept.
pub async fn channel_settings_apply(backend: &Backend) {
    let name = unique("ch.settings");
    let s = ChannelSettings {
        public: true,
        history_len: 100_000,
        history_age_ms: 0,
        coalesce_ms: 250,
    };
    backend
        .channels
        .channel_configure(&name, s.clone())
        .await
        .unwrap();
    assert_eq!(
        backend.channels.channel_settings(&name).await.unwrap(),
        Some(s.clone())
    );
    let r = read(backend, &name, 0, 10, T).await;
    assert_eq!((r.epoch.as_str(), r.head, r.gap), ("", 0, false));
    assert!(r.messages.is_empty());
    let other = ChannelSettings::default();
    backend
        .channels
        .channel_configure(&name, other.clone())
        .await
        .unwrap();
    assert_eq!(
        backend.channels.channel_settings(&name).await.unwrap(),
        Some(other)
    );

    let messages = (1..=10).map(|i| json(&i.to_string())).collect();
    let (epoch, ..) = publish(backend, &name, messages, T).await;
    publish(backend, &name, jsons(&["11"]), T + 100).await;
    backend
        .channels
        .channel_configure(&name, settings(4, 0))
        .await
        .unwrap();
    assert_eq!(
        backend.channels.channel_settings(&name).await.unwrap(),
        Some(settings(4, 0))
    );
    let r = read(backend, &name, 6, 10, T + 100).await;
    assert!(r.gap, "a shorter history applies to kept messages: {r:?}");
    assert_eq!(
        offsets(&read(backend, &name, 7, 10, T + 100).await),
        vec![8, 9, 10, 11]
    );
    // A shorter age, too.
    backend
        .channels
        .channel_configure(&name, settings(4, 50))
        .await
        .unwrap();
    assert!(read(backend, &name, 7, 10, T + 100).await.gap);
    assert_eq!(
        offsets(&read(backend, &name, 10, 10, T + 100).await),
        vec![11]
    );
    // Configuring keeps the epoch and the head.
    let r = read(backend, &name, 11, 10, T + 100).await;
    assert_eq!(
        (r.epoch.as_str(), r.head, r.gap),
        (epoch.as_str(), 11, false)
    );
    let (again, first, _) = publish(backend, &name, jsons(&["12"]), T + 200).await;
    assert_eq!((again.as_str(), first), (epoch.as_str(), 12));
}

/// Listing by prefix in name order, after a name, at most a limit, with
/// each channel's epoch, head and settings.
pub async fn channel_list(backend: &Backend) {
    let prefix = unique("ch.list") + ".";
    let names: Vec<String> = (0..7).map(|i| format!("{prefix}{i:02}")).collect();
    for (i, name) in names.iter().enumerate().rev() {
        if i % 2 == 0 {
            publish(backend, name, jsons(&["1"; 3][..i % 3 + 1]), T).await;
        } else {
            backend
                .channels
                .channel_configure(name, settings(i as u64, 0))
                .await
                .unwrap();
        }
    }
    // Neighbours outside the prefix, and the prefix itself.
    publish(backend, &prefix[..prefix.len() - 1], jsons(&["1"]), T).await;
    publish(
        backend,
        &(prefix[..prefix.len() - 1].to_string() + "-"),
        jsons(&["1"]),
        T,
    )
    .await;
    publish(backend, &prefix, jsons(&["1"]), T).await;

    let mut seen: Vec<ChannelInfo> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = backend
            .channels
            .channel_list(&prefix, after.as_deref(), 3)
            .await
            .unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(last.name.clone());
        seen.extend(page);
    }
    let mut want = vec![prefix.clone()];
    want.extend(names.iter().cloned());
    assert_eq!(
        seen.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        want
    );
    // An `after` that sorts before the prefix starts at the prefix.
    let from_before = backend
        .channels
        .channel_list(&prefix, Some(&prefix[..prefix.len() - 1]), 100)
        .await
        .unwrap();
    assert_eq!(
        from_before
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>(),
        want
    );
    for (i, info) in seen[1..].iter().enumerate() {
        if i % 2 == 0 {
            assert!(!info.epoch.is_empty());
            assert_eq!(info.head, (i % 3 + 1) as u64);
            assert_eq!(info.settings, None);
            let r = read(backend, &info.name, 0, 10, T).await;
            assert_eq!((r.epoch.as_str(), r.head), (info.epoch.as_str(), info.head));
        } else {
            assert_eq!((info.epoch.as_str(), info.head), ("", 0));
            assert_eq!(info.settings, Some(settings(i as u64, 0)));
        }
    }
    let all = backend
        .channels
        .channel_list(&prefix, None, usize::MAX)
        .await
        .unwrap();
    assert_eq!(all, seen);
    let page = backend
        .channels
        .channel_list(&prefix, Some(&names[5]), 10)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        vec![names[6].as_str()]
    );
    assert!(
        backend
            .channels
            .channel_list(&(prefix.clone() + "zz"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// JSON text and opaque bytes (every byte value, invalid UTF-8, empty)
/// come back as they were published.
pub async fn channel_binary_payloads(backend: &Backend) {
    let name = unique("ch.binary");
    let all_bytes: Vec<u8> = (0..=255u8).rev().collect();
    let messages = vec![
        NewChannelMessage {
            binary: true,
            data: all_bytes.clone(),
        },
        NewChannelMessage {
            binary: true,
            data: vec![],
        },
        json("{\"s\":\"h\\u00e9llo \\\"x\\\" \u{1F30A}\"}"),
        NewChannelMessage {
            binary: true,
            data: vec![0xff, 0xfe, 0, b'{'],
        },
        NewChannelMessage {
            binary: true,
            data: vec![0x5a; 70_000],
        },
    ];
    publish(backend, &name, messages.clone(), T).await;
    let r = read(backend, &name, 0, 10, T).await;
    let got: Vec<NewChannelMessage> = r
        .messages
        .into_iter()
        .map(|m| NewChannelMessage {
            binary: m.binary,
            data: m.data,
        })
        .collect();
    assert_eq!(got, messages);
}

fn u8t() -> BitType {
    BitType {
        signed: false,
        bits: 8,
    }
}

async fn blob_bytes(b: &Backend, key: &str) -> Vec<u8> {
    let read = b
        .blobs
        .blob_read(key, 0, u64::MAX)
        .await
        .expect("blob_read")
        .expect("the blob is there");
    let mut body = read.body;
    let mut out = Vec::new();
    while let Some(piece) = body.next().await {
        out.extend_from_slice(&piece.expect("a piece"));
    }
    out
}

/// A publish with bitfield operations applies them and stores the
/// messages in one step; a refused batch (absent blob, uploaded blob, an
/// operation that does not fit) stores no message and uses no offset.
pub async fn channel_publish_with_blob(backend: &Backend) {
    let key = unique("ch/board");
    let meta = match backend
        .blobs
        .blob_create_fixed(&key, 16, false, T)
        .await
        .unwrap()
    {
        Created::Created(meta) => meta,
        other => panic!("{other:?}"),
    };
    let name = unique("ch.board");

    // Refused on a channel never published on: it stays unknown.
    let absent = BlobWrite {
        key: unique("ch/none"),
        ops: vec![BlobOp::Get {
            ty: u8t(),
            offset: 0,
        }],
    };
    let refused = backend
        .channels
        .channel_publish(&name, jsons(&["0"]), Some(absent.clone()), T)
        .await
        .unwrap();
    assert_eq!(refused, Published::BlobRefused(Applied::NotFound));
    let r = read(backend, &name, 0, 10, T).await;
    assert_eq!((r.epoch.as_str(), r.head), ("", 0));
    assert!(
        backend
            .channels
            .channel_list(&name, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let ops = vec![
        BlobOp::Set {
            ty: u8t(),
            offset: 3 * 8,
            value: 7,
            overflow: Overflow::Wrap,
        },
        BlobOp::IncrBy {
            ty: u8t(),
            offset: 3 * 8,
            by: 2,
            overflow: Overflow::Wrap,
        },
        BlobOp::WriteAt {
            offset: 10,
            data: b"hi".to_vec(),
        },
    ];
    let done = backend
        .channels
        .channel_publish(
            &name,
            jsons(&["{\"x\":3,\"c\":9}", "{\"t\":\"hi\"}"]),
            Some(BlobWrite {
                key: key.clone(),
                ops,
            }),
            T + 1,
        )
        .await
        .unwrap();
    let Published::Done {
        epoch,
        first,
        last,
        applied: Some((results, after)),
    } = done
    else {
        panic!("publish with ops: {done:?}");
    };
    assert!(!epoch.is_empty());
    assert_eq!((first, last), (1, 2));
    assert_eq!(results, vec![Some(0), Some(9), None]);
    assert!(after.version > meta.version && after.mutable && after.size == 16);
    assert_eq!(
        backend.blobs.blob_meta(&key).await.unwrap(),
        Some(after.clone())
    );
    let mut want = vec![0u8; 16];
    want[3] = 9;
    want[10..12].copy_from_slice(b"hi");
    assert_eq!(blob_bytes(backend, &key).await, want);
    let r = read(backend, &name, 0, 10, T + 1).await;
    assert_eq!(offsets(&r), vec![1, 2]);
    assert_eq!(r.messages[0].data, b"{\"x\":3,\"c\":9}");
    assert_eq!(r.messages[1].at_ms, T + 1);

    // Refusals: nothing stored, no offset used, the blob unchanged.
    let uploaded = unique("ch/uploaded");
    let mut up = backend.blobs.blob_upload(&uploaded).await.unwrap();
    up.write(Bytes::from_static(b"immutable")).await.unwrap();
    up.commit(None, T).await.unwrap();
    let refusals = [
        (absent, "absent"),
        (
            BlobWrite {
                key: uploaded.clone(),
                ops: vec![BlobOp::Get {
                    ty: u8t(),
                    offset: 0,
                }],
            },
            "uploaded",
        ),
        (
            BlobWrite {
                key: key.clone(),
                ops: vec![
                    BlobOp::Set {
                        ty: u8t(),
                        offset: 0,
                        value: 1,
                        overflow: Overflow::Wrap,
                    },
                    BlobOp::Get {
                        ty: u8t(),
                        offset: 16 * 8,
                    },
                ],
            },
            "invalid",
        ),
    ];
    for (write, what) in refusals {
        let out = backend
            .channels
            .channel_publish(&name, jsons(&["\"no\""]), Some(write), T + 2)
            .await
            .unwrap();
        match (&out, what) {
            (Published::BlobRefused(Applied::NotFound), "absent")
            | (Published::BlobRefused(Applied::NotMutable), "uploaded") => {}
            (Published::BlobRefused(Applied::Invalid(bad)), "invalid") => {
                assert_eq!(bad.index, 1)
            }
            _ => panic!("{what}: {out:?}"),
        }
        let r = read(backend, &name, 0, 10, T + 2).await;
        assert_eq!((r.head, offsets(&r)), (2, vec![1, 2]), "{what}");
    }
    assert_eq!(blob_bytes(backend, &key).await, want);
    assert_eq!(
        backend.blobs.blob_meta(&key).await.unwrap(),
        Some(after.clone())
    );

    // The next publish takes the next offset.
    let (again, first, last) = publish(backend, &name, jsons(&["3"]), T + 3).await;
    assert_eq!((again.as_str(), first, last), (epoch.as_str(), 3, 3));
    // Ops with only reads also publish, answering the values.
    let done = backend
        .channels
        .channel_publish(
            &name,
            jsons(&["4"]),
            Some(BlobWrite {
                key: key.clone(),
                ops: vec![BlobOp::Get {
                    ty: u8t(),
                    offset: 3 * 8,
                }],
            }),
            T + 4,
        )
        .await
        .unwrap();
    match done {
        Published::Done {
            first: 4,
            last: 4,
            applied: Some((results, _)),
            ..
        } => assert_eq!(results, vec![Some(9)]),
        other => panic!("{other:?}"),
    }
}
