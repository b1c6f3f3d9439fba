//! event_bus benchmark driver.
//!
//! `throughput <connstr> <url> <events> <fanout> [keep] [ordered] [entities=N] [filtered[=spread]]`:
//! subscribe `fanout` subscriptions to `url` (ordered ones with `ordered`; with `filtered` each with a
//! content filter that selects the even half of the events, with `filtered=spread` a different half
//! for odd and even subscriptions), emit `events` events in one committed
//! statement (over N entities, round robin, with `entities=N`; else one entity each), time from
//! commit until every delivery finished. Prints `deliveries_per_s=<x> seconds=<y>`.
//!
//! `latency <connstr> <events> <background_rate> [hang=N]`: run an HTTP receiver on 127.0.0.1,
//! subscribe it, emit `events` single events spaced 10 ms apart (each its own commit) while a second
//! connection emits `background_rate` events/s to the same subscription; print p50/p95/p99 of
//! commit → handler. With `hang=N`: first N events to a second subscription whose endpoint accepts
//! connections and never answers (30 s timeout), still in flight while the probes run.
//!
//! `unmatched <connstr> <events>`: emit `events` events that match no subscription in one statement,
//! then one that does; print how fast the burst was completed (`unmatched_per_s`) and how long the
//! matched one took from its commit to its handler (`probe_ms`).
//!
//! `sustained <connstr> <url> <clients> <seconds> [failing url]`: `clients` connections emit single events (each
//! its own commit) as fast as they can for `seconds`, to a subscription to `url`, while a probe
//! emits an event every 50 ms to this driver's own receiver. Prints events emitted/s, deliveries
//! completed/s during the run, the backlog (events not yet delivered) at its end, how long it took
//! to drain, and the probes' commit → handler p50/p99. `[failing url]`: a second subscription to
//! the same events at `url`, failing every attempt (retries, breaker); the backlog and the drain are
//! then the sink's.
//!
//! `console <connstr> <console base url> <role> <password> <tenant|-> <samples>`: the Event
//! Monitor's pages against what they cost in SQL. Signs in to the console as `role`, then for each
//! page (overview, events, events filtered by status, by module + type) times `samples` GETs and
//! `samples` runs of the page's SQL as that role (its tenant set), and prints p50 / p99 of each,
//! and the page's first view (nothing cached by the console yet).
//!
//! `throughput ... failing=URL`: a second subscription to URL (answering errors at once) beside the
//! measured one, with a subscription's defaults (retries with backoff, the circuit breaker); timed
//! until the measured subscriptions are done.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod brokers;
mod common;
mod console;
mod latency;
mod pool;
mod request;
mod throughput;

use brokers::*;
// statements name delivery states from the lifecycle's declaration (<completed>, <claimable>)
use common::*;
use console::*;
use event_bus_core::lifecycle::sql;
use latency::*;
use pool::*;
use request::*;
use throughput::*;

const TENANT: &str = "44444444-4444-4444-4444-444444444444";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(|s| s.as_str()) {
        Some("throughput") => {
            let opts = &args[6.min(args.len())..];
            let entities = opts
                .iter()
                .find_map(|o| o.strip_prefix("entities="))
                .map(|n| n.parse().unwrap());
            throughput(
                &args[2],
                &args[3],
                args[4].parse().unwrap(),
                args[5].parse().unwrap(),
                Options {
                    keep: opts.iter().any(|o| o == "keep"),
                    ordered: opts.iter().any(|o| o == "ordered"),
                    filtered: opts.iter().find_map(|o| match o.as_str() {
                        "filtered" => Some(false),
                        "filtered=spread" => Some(true),
                        _ => None,
                    }),
                    entities,
                    failing: opts
                        .iter()
                        .find_map(|o| o.strip_prefix("failing="))
                        .map(|s| s.to_string()),
                },
            )
        }
        Some("latency") => {
            let hang = args
                .get(5)
                .and_then(|o| o.strip_prefix("hang="))
                .map(|n| n.parse().unwrap())
                .unwrap_or(0);
            latency(
                &args[2],
                args[3].parse().unwrap(),
                args[4].parse().unwrap(),
                hang,
            )
        }
        Some("unmatched") => unmatched(&args[2], args[3].parse().unwrap()),
        Some("sustained") => sustained(
            &args[2],
            &args[3],
            args[4].parse().unwrap(),
            args[5].parse().unwrap(),
            args.get(6).map(String::as_str),
        ),
        Some("request") => request(&args[2], &args[3], args[4].parse().unwrap()),
        Some("console") => console(
            &args[2],
            &args[3],
            &args[4],
            &args[5],
            &args[6],
            args[7].parse().unwrap(),
        ),
        Some("broker_setup") => broker_setup(&args[2]),
        Some("broker_baseline") => broker_baseline(&args[2], args[3].parse().unwrap()),
        Some("pool") => pool(
            &args[2],
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
            args[5].parse().unwrap(),
        ),
        _ => {
            eprintln!("usage: broker_setup <amqp, nats or kafka URL> | broker_baseline <URL> <messages> | pool <conn> <databases> <events per database> <idle samples> | request <conn> <sink url> <calls> | throughput <conn> <url|sql:schema.fn> <events> <fanout> [keep] [ordered] [entities=N] [filtered[=spread]] [failing=URL] | latency <conn> <events> <rate> [hang=N] | unmatched <conn> <events>");
            std::process::exit(2);
        }
    }
}
