//! Throwaway PostgreSQL clusters with event_bus preloaded, and polling helpers. Shared by the
//! extension's integration tests (through mod.rs) and the console's browser tests (by path).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn pg_bindir() -> PathBuf {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("pg_config on PATH");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Run a Postgres binary as the cluster owner, with its own libpq: relocated builds (the 16-18
/// of scripts/install-pg.sh) carry a RUNPATH of the directory they were built for, and would
/// load the system's older libpq (the walreceiver then rejects a newer pg_basebackup's options).
fn pg_cmd(bin: &str) -> Command {
    pg_cmd_in(&pg_bindir(), bin)
}

/// `pg_cmd` for the binaries in `bindir` (another PostgreSQL version than the one on PATH).
pub fn pg_cmd_in(bindir: &std::path::Path, bin: &str) -> Command {
    let path = bindir.join(bin);
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    };
    if let Ok(out) = Command::new(bindir.join("pg_config"))
        .arg("--libdir")
        .output()
    {
        let libdir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if std::path::Path::new(&libdir).join("libpq.so.5").exists()
            && !libdir.starts_with("/usr/lib")
        {
            c.env("LD_LIBRARY_PATH", libdir);
        }
    }
    c
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    /// The PostgreSQL binaries this cluster runs with.
    pub bindir: PathBuf,
    keep: bool,
}

impl Cluster {
    /// initdb + start, with `extra_conf` lines appended to postgresql.conf.
    ///
    /// The port is one the OS had free a moment before; another process (a test running beside
    /// this one, a client's ephemeral port) may take it before PostgreSQL binds it. Then the
    /// cluster starts again on another port (up to five times).
    pub fn start(name: &str, extra_conf: &[&str]) -> Cluster {
        let mut c = Cluster::init_with(&pg_bindir(), name, extra_conf);
        for _ in 0..5 {
            match c.try_pg_ctl_start() {
                Ok(()) => return c,
                Err(e) if e.contains("Address already in use") => {
                    c.port = free_port();
                    let conf_path = c.data().join("postgresql.conf");
                    let mut conf = std::fs::read_to_string(&conf_path).unwrap();
                    // the last setting of a name wins
                    conf.push_str(&format!("\nport = {}\n", c.port));
                    std::fs::write(&conf_path, conf).unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        c.pg_ctl_start();
        c
    }

    /// initdb with the binaries in `bindir`, not started.
    pub fn init_with(bindir: &std::path::Path, name: &str, extra_conf: &[&str]) -> Cluster {
        let dir = std::env::temp_dir().join(format!("event_bus-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data = dir.join("data");
        let out = pg_cmd_in(bindir, "initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        // log_lock_waits: when a test fails on a deadlock, the log shows what the other side of it
        // was waiting in (a background worker's statement is not in the deadlock report)
        let mut conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             shared_preload_libraries = 'event_bus'\nfsync = off\nmax_worker_processes = 32\n\
             log_min_messages = info\nlog_lock_waits = on\n",
            dir.display()
        );
        for l in extra_conf {
            conf.push_str(l);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();
        Cluster {
            dir,
            port,
            bindir: bindir.to_path_buf(),
            keep: std::env::var_os("EVENT_BUS_KEEP_CLUSTER").is_some(),
        }
    }

    /// A streaming replica of `primary` (pg_basebackup -R, which also copies the primary's
    /// settings: event_bus preloaded), started, on its own port. The primary needs
    /// `wal_level = replica` (the default) and WAL senders (the default 10).
    pub fn replica_of(primary: &Cluster, name: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!("event_bus-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            assert!(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap()
                .success());
        }
        let data = dir.join("data");
        let out = pg_cmd_in(&primary.bindir, "pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "stream",
                "-R",
                "--no-sync",
                "-c",
                "fast",
                "-p",
            ])
            .arg(primary.port.to_string())
            .arg("-D")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        // later lines win: the replica's own port and socket directory
        let conf_path = data.join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&conf_path).unwrap();
        conf.push_str(&format!(
            "\nport = {port}\nunix_socket_directories = '{}'\n",
            dir.display()
        ));
        std::fs::write(&conf_path, conf).unwrap();
        let c = Cluster {
            dir,
            port,
            bindir: primary.bindir.clone(),
            keep: std::env::var_os("EVENT_BUS_KEEP_CLUSTER").is_some(),
        };
        c.pg_ctl_start();
        c
    }

    /// pg_ctl promote: the replica becomes a primary (waits until it is).
    pub fn promote(&self) {
        // the server as in production: without RUST_BACKTRACE (with it, pgrx captures a backtrace
        // for every failing statement and appends it to the error's DETAIL)
        let out = pg_cmd_in(&self.bindir, "pg_ctl")
            .env_remove("RUST_BACKTRACE")
            .args(["-w", "-t", "60", "-D"])
            .arg(self.data())
            .arg("promote")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl promote: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pg_ctl_start(&self) {
        if let Err(e) = self.try_pg_ctl_start() {
            panic!("{e}");
        }
    }

    fn try_pg_ctl_start(&self) -> Result<(), String> {
        let out = pg_cmd_in(&self.bindir, "pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.log_path())
            .arg("start")
            .output()
            .unwrap();
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        ))
    }

    /// Stop: "fast" or "immediate" (a crash: no shutdown checkpoint, recovery on start).
    pub fn pg_ctl_stop(&self, mode: &str) {
        let _ = pg_cmd_in(&self.bindir, "pg_ctl")
            .args(["-w", "-t", "60", "-m", mode, "-D"])
            .arg(self.data())
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn connstr(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=10",
            self.port
        )
    }

    pub fn connect(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.connstr(db), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {db}: {e}\n{}", self.log()))
    }

    /// A connection, or None while the server is (re)starting.
    pub fn try_connect(&self, db: &str) -> Option<postgres::Client> {
        postgres::Client::connect(&self.connstr(db), postgres::NoTls).ok()
    }

    /// A new database with the extension created.
    pub fn create_db_with_extension(&self, db: &str) -> postgres::Client {
        let mut admin = self.connect("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .unwrap();
        let mut c = self.connect(db);
        c.batch_execute("CREATE EXTENSION event_bus").unwrap();
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // a failed test keeps what the server said: its deadlock reports in full (who waited for
        // whom, running what), else the log's tail
        if std::thread::panicking() {
            self.print_log_excerpt();
        }
        if self.keep {
            eprintln!(
                "keeping cluster at {} (port {})",
                self.dir.display(),
                self.port
            );
            return;
        }
        self.pg_ctl_stop("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    fn print_log_excerpt(&self) {
        let Ok(log) = std::fs::read_to_string(self.log_path()) else {
            return;
        };
        let lines: Vec<&str> = log.lines().collect();
        let mut shown = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if l.contains("deadlock detected") {
                shown.extend(lines[i..(i + 16).min(lines.len())].iter().copied());
                shown.push("...");
            }
        }
        if shown.is_empty() {
            shown.extend(lines[lines.len().saturating_sub(40)..].iter().copied());
        }
        eprintln!(
            "--- {} (the test failed) ---\n{}\n---",
            self.log_path().display(),
            shown.join("\n")
        );
    }
}

/// Poll `f` until it returns Some or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An endpoint that accepts connections and never answers: each connection is held open, unread,
/// until the test ends. `accepted` counts connections.
pub struct Silent {
    pub port: u16,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Silent {
    pub fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(stream);
            }
        });
        Silent { port, accepted }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// One number from a query.
pub fn count(c: &mut postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}
