//! Run the deterministic simulator over many seeds (see tests/sim):
//! `cargo run --release --example simulate -- --seeds N [--from S]
//! [--actors upload,stock,...] [--verbose]`; `scripts/simulate.sh` wraps it.
//! Exit 1 if a seed broke an invariant.

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::time::Instant;

/// How many failing seeds are explained, and listed, at most.
const EXPLAINED: usize = 5;
const LISTED: usize = 100;

fn main() {
    let mut seeds = 100u64;
    let mut from = 0u64;
    let mut actors = sim::Actor::ALL.to_vec();
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&arg));
        match arg.as_str() {
            "--seeds" => seeds = value().parse().unwrap_or_else(|_| usage("--seeds")),
            "--from" => from = value().parse().unwrap_or_else(|_| usage("--from")),
            "--actors" => {
                actors = value()
                    .split(',')
                    .map(|name| sim::Actor::parse(name).unwrap_or_else(|| usage(name)))
                    .collect()
            }
            "--verbose" => verbose = true,
            _ => usage(&arg),
        }
    }
    if std::env::var_os("RUST_LOG").is_some() {
        // The product's own log, to follow a replayed seed step by step.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(VirtualTime)
            .with_writer(std::io::stderr)
            .init();
    }
    let started = Instant::now();
    let mut failed = Vec::new();
    for seed in from..from + seeds {
        let run = sim::run(seed, &actors);
        if verbose {
            run.log.iter().for_each(|line| println!("{line}"));
            print!("{}", run.world.lock().unwrap().history_where(|_| true));
        }
        if !run.violations().is_empty() {
            // The first few are explained in full; every one is listed.
            if failed.len() < EXPLAINED {
                println!("{}", run.explain(&actors));
            }
            failed.push(seed);
        }
        let done = seed - from + 1;
        if done % 100 == 0 || done == seeds {
            eprintln!(
                "{done}/{seeds} seeds, {} with invariant violations, {:.0} seeds/s",
                failed.len(),
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    if !failed.is_empty() {
        let shown: Vec<String> = failed.iter().take(LISTED).map(u64::to_string).collect();
        let more = match failed.len() > LISTED {
            true => format!(" and {} more", failed.len() - LISTED),
            false => String::new(),
        };
        println!("failing seeds: {}{more}", shown.join(", "));
        std::process::exit(1);
    }
}

/// The simulation's virtual time in the product's log: tokio's clock, which
/// the simulator pauses and advances, counted from its first reading.
struct VirtualTime;

impl tracing_subscriber::fmt::time::FormatTime for VirtualTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
        let start = *START.get_or_init(tokio::time::Instant::now);
        write!(w, "{:9.3}s", start.elapsed().as_secs_f64())
    }
}

fn usage(at: &str) -> ! {
    let names: Vec<&str> = sim::Actor::ALL.iter().map(|a| a.name()).collect();
    eprintln!(
        "simulate: bad argument {at:?}\nusage: simulate --seeds N [--from S] [--actors {}] [--verbose]",
        names.join(",")
    );
    std::process::exit(2)
}
