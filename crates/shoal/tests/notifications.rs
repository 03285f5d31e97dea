//! Notifications on a real `shoal serve`: a local webhook receiver (a small
//! HTTP server on 127.0.0.1 in this test) gets signed deliveries, checked
//! with the Python verifier printed in docs/notifications.md; a receiver
//! answering 500 twice sees three attempts, logged; a pending delivery
//! survives a kill -9 of the node.

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestNode, deploy, until};
use serde_json::Value;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A webhook receiver answering scripted statuses (then 200), recording
/// every request. Its thread ends with the test process.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(listener: TcpListener, script: &[u16]) -> Receiver {
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let (g, a) = (got.clone(), answers.clone());
        // Owned by the test process: it serves until the test ends.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (g, a) = (g.clone(), a.clone());
                std::thread::spawn(move || serve(stream, &g, &a));
            }
        });
        Receiver { url, got }
    }

    fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// Reads requests off one connection and answers each.
fn serve(stream: TcpStream, got: &Mutex<Vec<Received>>, answers: &Mutex<VecDeque<u16>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').expect("a header line");
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        got.lock().unwrap().push(Received { headers, body });
        let status = answers.lock().unwrap().pop_front().unwrap_or(200);
        let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// The verifier of docs/notifications.md, run by python3 on each request:
/// the documented snippet is what checks these signatures.
fn verify_with_documented_python(secret: &str, requests: &[Received]) {
    let doc = std::fs::read_to_string(common::repo_root().join("docs/notifications.md")).unwrap();
    let block = doc
        .split("<!-- verify:start -->")
        .nth(1)
        .and_then(|s| s.split("<!-- verify:end -->").next())
        .expect("the verifier block in docs/notifications.md");
    let code = block
        .trim()
        .trim_start_matches("```python")
        .trim_end_matches("```");
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let path = dir.path().join(format!("body{i}"));
        std::fs::write(&path, &r.body).unwrap();
        cases.push(serde_json::json!([
            r.header("Shoal-Signature"),
            path.display().to_string()
        ]));
    }
    let script = format!(
        "{code}\nimport json, sys\nsecret = sys.argv[1]\nfor header, path in json.loads(sys.argv[2]):\n    body = open(path, 'rb').read()\n    assert verify(secret, header, body), (header, path)\n    assert not verify(secret + 'x', header, body)\n    assert not verify(secret, header, body + b' ')\nprint('verified', len(json.loads(sys.argv[2])))\n"
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(secret)
        .arg(serde_json::Value::Array(cases).to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the documented verifier refused a delivery:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("verified {}", requests.len())
    );
}

fn cli_json(node: &TestNode, args: &[&str]) -> Value {
    let out = node.cli(args);
    assert!(
        out.status.success(),
        "shoal {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "shoal {args:?}: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

const FAILING: &str = "def handler(event, ctx):\n    raise ValueError('bad pixels')\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_invocation_is_posted_signed_and_a_receiver_failing_twice_sees_three_attempts() {
    let node = TestNode::start();
    let c = node.client();
    let receiver = Receiver::start(TcpListener::bind("127.0.0.1:0").unwrap(), &[500, 500]);
    let set = cli_json(
        &node,
        &[
            "--json",
            "notifications",
            "set",
            "ops",
            &receiver.url,
            "--event",
            "invocation.failed",
            "--function",
            "resize*",
        ],
    );
    let secret = set["secret"]
        .as_str()
        .expect("the generated secret")
        .to_string();
    deploy(&c, "name = \"resize\"\nretries = 0\n", FAILING).await;
    deploy(&c, "name = \"other\"\nretries = 0\n", FAILING).await;
    let _ = c.invoke_async("other", "{}").await.unwrap();
    let id = c.invoke_async("resize", "{\"n\": 1}").await.unwrap();

    until("three attempts", Duration::from_secs(30), async || {
        receiver.requests().len() >= 3
    })
    .await;
    let got = receiver.requests();
    assert_eq!(got.len(), 3, "only resize's failure, tried three times");
    for r in &got {
        assert_eq!(r.header("Shoal-Event"), "invocation.failed");
        assert_eq!(r.header("Shoal-Delivery"), got[0].header("Shoal-Delivery"));
        let b = r.json();
        assert_eq!(b["type"], "invocation.failed");
        assert_eq!(b["data"]["invocation"], id.as_str());
        assert_eq!(b["data"]["function"], "resize");
        assert_eq!(b["data"]["error"]["message"], "bad pixels");
    }
    verify_with_documented_python(&secret, &got);

    // The log: one delivery, three attempts, delivered.
    let mut log = Value::Null;
    until(
        "the log says delivered",
        Duration::from_secs(10),
        async || {
            log = cli_json(&node, &["--json", "notifications", "deliveries"]);
            log["items"][0]["status"] == "delivered"
        },
    )
    .await;
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{log}");
    assert_eq!(items[0]["name"], "ops");
    assert_eq!(items[0]["attempts"], 3);
    assert_eq!(items[0]["last_status_code"], 200);
    assert_eq!(items[0]["id"], got[0].header("Shoal-Delivery"));
    let failed = cli_json(
        &node,
        &[
            "--json",
            "notifications",
            "deliveries",
            "--status",
            "failed",
        ],
    );
    assert_eq!(failed["items"], serde_json::json!([]));

    // Listed without the secret; the table too.
    let ls = node.cli(&["notifications", "ls"]);
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(
        text.contains("ops") && text.contains(&receiver.url),
        "{text}"
    );
    assert!(!text.contains(&secret));
    let table = node.cli(&["notifications", "deliveries"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("delivered") && text.contains("invocation.failed"),
        "{text}"
    );
    let rm = node.cli(&["notifications", "rm", "ops"]);
    assert!(rm.status.success());
    assert_eq!(c.notifications().await.unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_delivery_is_sent_after_a_kill_9_and_restart() {
    let mut node = TestNode::start();
    let c = node.client();
    // A port with nothing listening yet: attempts are refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let set = c
        .put_notification(
            "ops",
            &shoal_client::protocol::PutNotification {
                url: url.clone(),
                events: Some(vec!["invocation.failed".into()]),
                functions: vec![],
                secret: Some("a secret of ours".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(set.secret, None);
    deploy(&c, "name = \"boom\"\nretries = 0\n", FAILING).await;
    let id = c.invoke_async("boom", "{}").await.unwrap();
    until(
        "a refused attempt logged",
        Duration::from_secs(30),
        async || {
            let page = c
                .notification_deliveries(None, None, 10, None)
                .await
                .unwrap();
            page.items
                .first()
                .is_some_and(|d| d.status == "pending" && d.attempts >= 1)
        },
    )
    .await;

    node.kill9();
    let receiver = Receiver::start(
        TcpListener::bind(("127.0.0.1", port)).expect("the port again"),
        &[],
    );
    node.kill9_and_restart();
    let c = node.client();
    until(
        "the delivery after the restart",
        Duration::from_secs(60),
        async || !receiver.requests().is_empty(),
    )
    .await;
    let got = receiver.requests();
    assert_eq!(got[0].json()["data"]["invocation"], id.as_str());
    verify_with_documented_python("a secret of ours", &got[..1]);
    until(
        "delivered in the log",
        Duration::from_secs(10),
        async || {
            let page = c
                .notification_deliveries(Some("ops"), Some("delivered"), 10, None)
                .await
                .unwrap();
            page.items.len() == 1 && page.items[0].attempts >= 2
        },
    )
    .await;
    assert_eq!(receiver.requests().len(), 1, "delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_redis_share_the_settings_and_deliver_each_event_once() {
    let redis = shoal_store_redis::testing::RedisServer::start(&[]);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("cluster.key");
    let node = || {
        TestNode::start_with(&[
            "--store",
            &redis.url(),
            "--redis-namespace",
            "e2e",
            "--secrets-key-file",
            key.to_str().unwrap(),
        ])
    };
    let nodes = [node(), node()];
    let c: Vec<_> = nodes.iter().map(|n| n.client()).collect();
    let receiver = Receiver::start(TcpListener::bind("127.0.0.1:0").unwrap(), &[503]);
    // Set on node 0; node 1 reads it from the store.
    let set = c[0]
        .put_notification(
            "ops",
            &shoal_client::protocol::PutNotification {
                url: receiver.url.clone(),
                events: Some(vec!["invocation.failed".into()]),
                functions: vec![],
                secret: None,
            },
        )
        .await
        .unwrap();
    let secret = set.secret.expect("generated");
    assert_eq!(c[1].notifications().await.unwrap().len(), 1);
    deploy(&c[0], "name = \"boom\"\nretries = 0\n", FAILING).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(c[i % 2].invoke_async("boom", "{}").await.unwrap());
    }
    until(
        "every delivery delivered",
        Duration::from_secs(60),
        async || {
            let page = c[1]
                .notification_deliveries(Some("ops"), Some("delivered"), 100, None)
                .await
                .unwrap();
            page.items.len() == 4
        },
    )
    .await;
    let got = receiver.requests();
    // Four events, one delivery each; one of them was answered 503 first.
    assert_eq!(got.len(), 5, "{got:?}");
    let mut delivered: Vec<String> = got
        .iter()
        .map(|r| r.json()["data"]["invocation"].as_str().unwrap().to_string())
        .collect();
    delivered.sort();
    delivered.dedup();
    ids.sort();
    assert_eq!(delivered, ids);
    verify_with_documented_python(&secret, &got);
}
