//! Partial results of queries spread over nodes (`Docs::put_query_part`
//! and the rest) on a real `redis-server`: the first write of a shard wins,
//! also between two nodes' connections, bodies are raw bytes, the hash
//! expires, and a drop leaves no key.

use std::process::Command;

use shoal_store::Docs;
use shoal_store_redis::RedisStore;
use shoal_store_redis::testing::RedisServer;

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.options())
        .await
        .expect("connect")
        .0
}

fn cli(server: &RedisServer, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &server.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn the_first_partial_of_a_shard_wins_across_nodes() {
    let server = RedisServer::start(&[]);
    let (a, b) = (store(&server).await, store(&server).await);
    assert!(a.shares_queries());
    let raw = vec![0u8, 255, b'\n', 7];
    assert!(
        a.put_query_part("q1", 3, raw.clone(), 60_000)
            .await
            .unwrap()
    );
    assert!(
        !b.put_query_part("q1", 3, b"late".to_vec(), 60_000)
            .await
            .unwrap()
    );
    assert!(
        b.put_query_part("q1", 5, b"five".to_vec(), 60_000)
            .await
            .unwrap()
    );
    let got = b.query_parts("q1", vec![5, 4, 3]).await.unwrap();
    assert_eq!(got, vec![Some(b"five".to_vec()), None, Some(raw)]);
    assert_eq!(
        a.query_parts("q1", Vec::new()).await.unwrap(),
        Vec::<Option<Vec<u8>>>::new()
    );
    assert_eq!(a.query_parts("other", vec![3]).await.unwrap(), vec![None]);

    // One hash per query, under its own tag, with an expiry.
    let keys = cli(&server, &["--scan", "--pattern", "*q1*"]);
    assert_eq!(
        keys,
        format!("{}:{{q:q1}}:parts", server.options().namespace)
    );
    let ttl: i64 = cli(&server, &["PTTL", &keys]).parse().unwrap();
    assert!((1..=60_000).contains(&ttl), "{ttl}");

    a.drop_query_parts("q1").await.unwrap();
    assert_eq!(cli(&server, &["--scan", "--pattern", "*q1*"]), "");
    assert_eq!(b.query_parts("q1", vec![3]).await.unwrap(), vec![None]);
    // Dropping what is gone is fine.
    a.drop_query_parts("q1").await.unwrap();
}

#[tokio::test]
async fn partials_expire_by_themselves() {
    let server = RedisServer::start(&[]);
    let a = store(&server).await;
    assert!(a.put_query_part("q2", 0, b"x".to_vec(), 50).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(a.query_parts("q2", vec![0]).await.unwrap(), vec![None]);
}
