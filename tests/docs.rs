//! The docs cannot rot: every SQL example in docs/src marked runnable (a fenced block whose info
//! string is `sql,runnable`) runs against a fresh database with the extension, page by page in
//! order; and the settings reference lists exactly the settings the extension defines, each with
//! the context PostgreSQL reports for it.

use event_bus_testkit as common;

use common::Cluster;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/src")
}

fn pages(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            pages(&p, out);
        } else if p.extension().is_some_and(|e| e == "md") {
            out.push(p);
        }
    }
}

/// The runnable blocks of a page, in order.
fn runnable_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    let mut in_other_fence = false;
    for line in text.lines() {
        if let Some(block) = current.as_mut() {
            if line.trim_start().starts_with("```") {
                blocks.push(current.take().unwrap());
            } else {
                block.push_str(line);
                block.push('\n');
            }
        } else if line.trim_start().starts_with("```") {
            let info = line.trim_start().trim_start_matches('`').trim();
            if in_other_fence {
                in_other_fence = false;
            } else if info == "sql,runnable" {
                current = Some(String::new());
            } else {
                in_other_fence = true;
            }
        }
    }
    assert!(current.is_none(), "an unclosed runnable block");
    blocks
}

#[test]
fn every_runnable_sql_example_in_the_docs_runs() {
    let cluster = Cluster::start("docs-examples", &["event_bus.poll_interval_ms = 200"]);
    let mut files = Vec::new();
    pages(&docs(), &mut files);
    let mut ran = 0;
    for (i, file) in files.iter().enumerate() {
        let blocks = runnable_blocks(&std::fs::read_to_string(file).unwrap());
        if blocks.is_empty() {
            continue;
        }
        let mut c = cluster.create_db_with_extension(&format!("docs_{i}"));
        for block in blocks {
            c.batch_execute(&block).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}\n{}\n---\n{block}",
                    file.display(),
                    e.as_db_error().map(|d| d.message()).unwrap_or("")
                )
            });
            ran += 1;
        }
    }
    assert!(ran >= 5, "only {ran} runnable examples found");
}

#[test]
fn the_settings_reference_lists_every_setting_with_its_context() {
    let cluster = Cluster::start("docs-settings", &[]);
    let mut c = cluster.connect("postgres");
    let defined: BTreeMap<String, String> = c
        .query(
            "SELECT name, context FROM pg_settings WHERE name LIKE 'event\\_bus.%' ORDER BY name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            let context: String = r.get(1);
            let documented = match context.as_str() {
                "sighup" => "reload",
                "superuser" => "superuser",
                "postmaster" => "restart",
                "user" => "user",
                other => panic!("a context the docs have no word for: {other}"),
            };
            (r.get(0), documented.to_string())
        })
        .collect();
    let text = std::fs::read_to_string(docs().join("reference/settings.md")).unwrap();
    let documented: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            // | `name` | default | context | meaning |
            let name = cells
                .get(1)?
                .strip_prefix("`event_bus.")?
                .strip_suffix('`')?;
            Some((format!("event_bus.{name}"), cells.get(3)?.to_string()))
        })
        .collect();
    assert!(defined.len() > 20, "{defined:?}");
    assert_eq!(
        documented, defined,
        "docs/src/reference/settings.md and the extension's settings differ"
    );
}
