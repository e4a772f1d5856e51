//! `sim`: runs seeds of the deterministic simulation and reports the first
//! that breaks a property, with the command that replays it.
//!
//! ```text
//! sim --seeds N [--start S]     N seeds from S (default 1)
//! sim --seed S [--trace]        one seed, step by step with --trace
//! sim --coordinators N ...      every world with N coordinators (1 or 3);
//!                               by default each seed draws it
//! sim --mutation-check ...      succeed only if some seed fails (a build
//!                               with a mutate-* feature must be caught)
//! sim --keep-going ...          run every seed, list the failing ones
//! ```

use std::process::ExitCode;
use std::time::Instant;

struct Args {
    start: u64,
    seeds: u64,
    trace: bool,
    mutation_check: bool,
    keep_going: bool,
    options: tally_sim::Options,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        start: 1,
        seeds: 100,
        trace: false,
        mutation_check: false,
        keep_going: false,
        options: tally_sim::Options::default(),
    };
    let mut it = std::env::args().skip(1);
    let number = |v: Option<String>, flag: &str| -> Result<u64, String> {
        v.ok_or(format!("{flag} needs a number"))?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seeds" => args.seeds = number(it.next(), "--seeds")?,
            "--start" => args.start = number(it.next(), "--start")?,
            "--seed" => {
                args.start = number(it.next(), "--seed")?;
                args.seeds = 1;
            }
            "--trace" => args.trace = true,
            "--mutation-check" => args.mutation_check = true,
            "--keep-going" => args.keep_going = true,
            "--coordinators" => match number(it.next(), "--coordinators")? {
                n @ (1 | 3) => args.options.coordinators = Some(n as usize),
                n => return Err(format!("--coordinators: 1 or 3, not {n}")),
            },
            "-h" | "--help" => {
                return Err("usage: sim [--seeds N] [--start S] | --seed S [--trace] \
                     [--coordinators 1|3] [--mutation-check] [--keep-going]"
                    .into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mutations = tally_sim::mutations();
    if !mutations.is_empty() {
        println!("mutations compiled in: {}", mutations.join(", "));
    }
    let began = Instant::now();
    let mut events = 0;
    let mut failed = Vec::new();
    for seed in args.start..args.start + args.seeds {
        let report = tally_sim::run_with(seed, args.trace, args.options);
        events += report.events;
        if args.seeds == 1 {
            println!(
                "seed {seed}: {:?}\n  {} events, ended at {} ms, {} requests acknowledged, {} reads, decided {}",
                report.settings, report.events, report.end_ms, report.acked, report.reads, report.decided
            );
        }
        if let Some(v) = report.violation {
            println!(
                "FAIL seed {seed}: {} (at {} ms); replay: {}",
                v.property,
                v.time,
                tally_sim::replay_command(seed, args.options)
            );
            if args.keep_going {
                failed.push(seed);
                continue;
            }
            println!("{}", v.detail);
            return if args.mutation_check {
                println!(
                    "the mutation is caught at seed {seed} ({} seeds run)",
                    seed - args.start + 1
                );
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    }
    if !failed.is_empty() {
        println!(
            "{} of {} seeds failed: {failed:?}",
            failed.len(),
            args.seeds
        );
        return ExitCode::FAILURE;
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "{} seeds from {} passed in {secs:.1} s ({:.0} seeds/min, {events} events)",
        args.seeds,
        args.start,
        args.seeds as f64 * 60.0 / secs.max(1e-9)
    );
    if args.mutation_check {
        println!("NOT CAUGHT: no seed failed with {}", mutations.join(", "));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
