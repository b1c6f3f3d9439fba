//! Writes the upgrade scripts, `sql/event_bus--<from>--<current>.sql`, one per earlier release, at build
//! time (git ignores them; `cargo pgrx install` and `package` copy them beside the install script).
//!
//! An upgrade from release X to the current version is:
//!   1. `sql/tenant.sql` (the tenant functions: they read no table, and the table changes use them),
//!   2. every table change since X, in order: `sql/upgrades/X--Y.sql`, `Y--Z.sql`, ... up to the current
//!      version (small, hand-written, run once per database; frozen once released),
//!   3. every re-runnable source after the tables, in the order a fresh install loads them (CREATE OR
//!      REPLACE throughout): what the current version's functions, views, triggers and grants are.
//!
//! So no function of an intermediate release is ever needed again, and the current sources are the one
//! truth for what an upgraded database runs. tests/upgrade.rs upgrades from every release and compares
//! the result with a fresh install object by object.

use std::fs;
use std::path::Path;

/// The install order after `sql/tables.sql`; `src/lib.rs` loads the same files in the same order (checked
/// below). Each must be re-runnable.
const RERUNNABLE_AFTER_TABLES: &[&str] = &[
    "roles",
    "api",
    "run_as",
    "lifecycle",
    "contracts",
    "testing",
    "internals",
    "monitor",
    "operations",
];

const GENERATED: &str = "-- GENERATED at build time by build.rs";

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sql = root.join("sql");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=sql");
    println!("cargo:rerun-if-changed=sql/upgrades");
    println!("cargo:rerun-if-changed=src/lib.rs");
    let current = env!("CARGO_PKG_VERSION");

    check_install_order(&root.join("src/lib.rs"));

    // the chain of table changes: from -> to, contiguous, ending at the current version
    let mut steps: Vec<(String, String)> = fs::read_dir(sql.join("upgrades"))
        .expect("sql/upgrades/")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".sql")?;
            let (from, to) = stem.split_once("--")?;
            Some((from.to_string(), to.to_string()))
        })
        .collect();
    steps.sort_by_key(|(from, _)| version_key(from));
    for pair in steps.windows(2) {
        assert_eq!(
            pair[0].1, pair[1].0,
            "sql/upgrades/ must be a chain: {}--{} is followed by {}--{}",
            pair[0].0, pair[0].1, pair[1].0, pair[1].1
        );
    }
    let last = steps.last().map(|(_, to)| to.as_str());
    assert_eq!(
        last,
        Some(current),
        "sql/upgrades/ must end at the crate's version {current}: add sql/upgrades/<previous>--{current}.sql \
         (empty but for a comment if no table changed)"
    );

    let read = |p: &Path| fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let tenant = read(&sql.join("tenant.sql"));
    let mut tail = String::new();
    for name in RERUNNABLE_AFTER_TABLES {
        tail.push_str(&format!(
            "\n-------------------------------------------------- sql/{name}.sql\n"
        ));
        tail.push_str(&read(&sql.join(format!("{name}.sql"))));
    }

    let mut wanted = Vec::new();
    for (i, (from, _)) in steps.iter().enumerate() {
        let file = format!("event_bus--{from}--{current}.sql");
        let mut out = String::new();
        out.push_str(&format!(
            "-- event_bus {from} -> {current} (ALTER EXTENSION event_bus UPDATE).\n{GENERATED} from sql/upgrades/ \
             and the re-runnable sources; edit those.\n\\echo Use \"ALTER EXTENSION event_bus UPDATE TO '{current}'\" \
             to load this file. \\quit\n"
        ));
        out.push_str("\n-------------------------------------------------- sql/tenant.sql\n");
        out.push_str(&tenant);
        for (f, t) in &steps[i..] {
            out.push_str(&format!(
                "\n-------------------------------------------------- sql/upgrades/{f}--{t}.sql\n"
            ));
            out.push_str(&read(&sql.join(format!("upgrades/{f}--{t}.sql"))));
        }
        out.push_str(&tail);
        let path = sql.join(&file);
        if fs::read_to_string(&path).ok().as_deref() != Some(out.as_str()) {
            fs::write(&path, out).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        wanted.push(file);
    }
    // generated scripts of an earlier version of the crate (hand-written ones never start so)
    for e in fs::read_dir(&sql).expect("sql/").flatten() {
        let name = e.file_name().into_string().unwrap_or_default();
        if name.starts_with("event_bus--") && !wanted.contains(&name) {
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            if text
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with(GENERATED))
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// src/lib.rs must load tenant, tables, then the re-runnable sources in RERUNNABLE_AFTER_TABLES's order.
fn check_install_order(lib: &Path) {
    let text = fs::read_to_string(lib).expect("src/lib.rs");
    let loaded: Vec<&str> = text
        .match_indices("\"../sql/")
        .map(|(i, _)| {
            let rest = &text[i + 8..];
            &rest[..rest.find(".sql\"").expect("extension_sql_file! path")]
        })
        .collect();
    let mut expected = vec!["tenant", "tables"];
    expected.extend_from_slice(RERUNNABLE_AFTER_TABLES);
    assert_eq!(
        loaded, expected,
        "src/lib.rs loads sql/ in a different order than build.rs writes into the upgrade scripts"
    );
}
