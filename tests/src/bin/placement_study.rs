//! The placement study (docs/PLACEMENT.md): runs the churn simulator of
//! `vmail_tests::churn` over every strategy × redundancy × repair setting,
//! averaged over a few seeds, prints a markdown table and writes it, with
//! SVG plots, into `docs/placement/`.
//!
//! `cargo run --release -p vmail-tests --bin placement-study -- [--seed S]
//! [--seeds N] [--peers P] [--messages M] [--out DIR] [--strategies LIST]
//! [--redundancies LIST] [--repairs LIST]`; `--out` defaults to the
//! workspace's `docs/placement`. The lists are comma-separated keys
//! (`Strategy::key`, `4/8` or `3x`, `eager`/`lazy`/`off`) that narrow the
//! grid, e.g. for a 10 000-peer run; the plots are written only for the
//! full grid.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use vmail_node::core::erasure::Redundancy;
use vmail_tests::churn::{AGES_DAYS, Repair, Report, Scenario, Strategy, run};

/// Redundancies compared: three copies (the old default), RS(4,8) (the
/// current default, overhead 2) and RS(3,10) (overhead 3.3, more shards).
const REDUNDANCIES: [Redundancy; 3] = [
    Redundancy::Replicas(3),
    Redundancy::ReedSolomon { k: 4, n: 8 },
    Redundancy::ReedSolomon { k: 3, n: 10 },
];

/// The strategies the plots show: the four of the original study and the
/// load-spreading variant `placement.scorer = "three-choice"` (the table
/// has the others).
const PLOTTED: [Strategy; 5] = [
    Strategy::PaperMin,
    Strategy::PaperMax,
    Strategy::Random,
    Strategy::Kademlia,
    Strategy::ThreeChoice,
];

/// Seeds averaged by default: enough to smooth one population's luck and
/// still finish within two minutes on two cores.
const DEFAULT_SEEDS: u64 = 3;

#[derive(Debug)]
struct Args {
    seed: u64,
    seeds: u64,
    peers: usize,
    messages: usize,
    out: PathBuf,
    strategies: Vec<Strategy>,
    redundancies: Vec<Redundancy>,
    repairs: Vec<Repair>,
}

/// The `--redundancies` key of `r`, as `placement.redundancy` spells it.
fn redundancy_key(r: Redundancy) -> String {
    match r {
        Redundancy::Replicas(n) => format!("{n}x"),
        Redundancy::ReedSolomon { k, n } => format!("{k}/{n}"),
    }
}

/// Parses a comma-separated list with `one`, naming the flag and the valid
/// keys on a bad entry.
fn list<T>(
    flag: &str,
    value: &str,
    valid: &str,
    one: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>> {
    value
        .split(',')
        .map(|k| one(k.trim()).with_context(|| format!("{flag}: unknown entry {k:?}; use {valid}")))
        .collect()
}

fn parse_args() -> Result<Args> {
    let d = Scenario::default();
    let mut a = Args {
        seed: d.seed,
        seeds: DEFAULT_SEEDS,
        peers: d.peers,
        messages: d.messages,
        // The workspace's docs, wherever cargo is run from.
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/placement"),
        strategies: Strategy::ALL.to_vec(),
        redundancies: REDUNDANCIES.to_vec(),
        repairs: Repair::ALL.to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seed" => a.seed = value()?.parse().context("--seed takes an integer")?,
            "--seeds" => a.seeds = value()?.parse().context("--seeds takes an integer")?,
            "--peers" => a.peers = value()?.parse().context("--peers takes an integer")?,
            "--messages" => a.messages = value()?.parse().context("--messages takes an integer")?,
            "--out" => a.out = PathBuf::from(value()?),
            "--strategies" => {
                let valid: Vec<&str> = Strategy::ALL.iter().map(|s| s.key()).collect();
                a.strategies = list(&flag, &value()?, &valid.join(", "), Strategy::from_key)?
            }
            "--redundancies" => {
                a.redundancies = list(&flag, &value()?, "K/N or Rx, e.g. 4/8", |k| {
                    k.parse::<Redundancy>().ok()
                })?
            }
            "--repairs" => {
                a.repairs = list(&flag, &value()?, "eager, lazy, off", Repair::from_key)?
            }
            other => bail!(
                "unknown flag {other:?}: use --seed S, --seeds N, --peers P, --messages M, \
                 --out DIR, --strategies LIST, --redundancies LIST, --repairs LIST"
            ),
        }
    }
    if a.seeds == 0 || a.peers < 20 {
        bail!("need at least one seed and 20 peers");
    }
    if a.strategies.is_empty() || a.redundancies.is_empty() || a.repairs.is_empty() {
        bail!("--strategies, --redundancies and --repairs each need at least one entry");
    }
    Ok(a)
}

/// One grid cell, averaged over seeds.
#[derive(Debug, Clone)]
struct Cell {
    strategy: Strategy,
    redundancy: Redundancy,
    repair: Repair,
    report: Report,
}

fn mean(reports: &[Report]) -> Report {
    let n = reports.len() as f64;
    let avg = |f: &dyn Fn(&Report) -> f64| reports.iter().map(f).sum::<f64>() / n;
    Report {
        retrievable: [0, 1, 2].map(|i| avg(&|r| r.retrievable[i])),
        overhead_placed: avg(&|r| r.overhead_placed),
        overhead_mean: avg(&|r| r.overhead_mean),
        overhead_end: avg(&|r| r.overhead_end),
        repair_bytes_per_message: avg(&|r| r.repair_bytes_per_message),
        unplaced_shards: reports.iter().map(|r| r.unplaced_shards).sum::<u64>()
            / reports.len() as u64,
        gini: avg(&|r| r.gini),
        max_over_mean: avg(&|r| r.max_over_mean),
        departures: reports.iter().map(|r| r.departures).sum::<u64>() / reports.len() as u64,
        online_share: avg(&|r| r.online_share),
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let started = Instant::now();
    let mut jobs = Vec::new();
    for &strategy in &args.strategies {
        for &redundancy in &args.redundancies {
            for &repair in &args.repairs {
                jobs.push((strategy, redundancy, repair));
            }
        }
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Vec<Report>>> = jobs
        .iter()
        .map(|_| std::sync::Mutex::new(Vec::new()))
        .collect();
    let total = jobs.len() * args.seeds as usize;
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let (job, seed) = (i / args.seeds as usize, i as u64 % args.seeds);
                    let (strategy, redundancy, repair) = jobs[job];
                    let scenario = Scenario {
                        peers: args.peers,
                        seed: args.seed + seed,
                        messages: args.messages,
                        ..Scenario::default()
                    };
                    let r = run(&scenario, strategy, redundancy, repair);
                    results[job].lock().expect("no panic").push(r);
                }
            });
        }
    });
    let cells: Vec<Cell> = jobs
        .iter()
        .zip(results)
        .map(|(&(strategy, redundancy, repair), r)| Cell {
            strategy,
            redundancy,
            repair,
            report: mean(&r.into_inner().expect("no panic")),
        })
        .collect();
    let elapsed = started.elapsed();

    let table = markdown(&cells);
    let online = cells.iter().map(|c| c.report.online_share).sum::<f64>() / cells.len() as f64;
    let departures = cells[0].report.departures;
    let (seed, seeds, peers, messages) = (args.seed, args.seeds, args.peers, args.messages);
    let secs = elapsed.as_secs_f64();
    let full = args.strategies == Strategy::ALL
        && args.redundancies == REDUNDANCIES
        && args.repairs == Repair::ALL;
    let grid = if full {
        String::new()
    } else {
        let keys = |v: Vec<String>| v.join(",");
        format!(
            " --strategies {} --redundancies {} --repairs {}",
            keys(args.strategies.iter().map(|s| s.key().to_owned()).collect()),
            keys(
                args.redundancies
                    .iter()
                    .map(|&r| redundancy_key(r))
                    .collect()
            ),
            keys(args.repairs.iter().map(|r| r.key().to_owned()).collect()),
        )
    };
    let mut doc = String::new();
    writeln!(
        doc,
        "# Placement study results\n\n\
         Generated by `cargo run --release -p vmail-tests --bin placement-study -- \
         --seed {seed} --seeds {seeds} --peers {peers} --messages {messages}{grid}`: \
         {peers} peers, {messages} voicemails of 1 MiB left during the first day, \
         31 days after a 7-day warm-up, each cell the mean of {seeds} seeds from {seed}. \
         Mean share of peers online: {:.1} %; peers that left for good during the \
         month (mean per run): {departures}. The grid of {total} runs took {secs:.1} s \
         on {threads} threads.\n\n\
         Columns: share retrievable (at least k distinct shards on online peers) at \
         ages 1, 7 and 30 days; bytes written at placement and bytes held (mean from \
         day 1 to 31, offline holders included) per ciphertext byte; repair traffic \
         (k shards read per repair plus each shard written) per voicemail; shards that \
         found no peer with room; Gini and max/mean of bytes held per peer at the end \
         of day 1.\n",
        online * 100.0,
    )?;
    doc.push_str(&table);
    print!("{doc}");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let path = args.out.join("results.md");
    std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;

    if !full {
        eprintln!(
            "wrote {} in {:.1} s (plots need the full grid)",
            path.display(),
            elapsed.as_secs_f64()
        );
        return Ok(());
    }
    let rs48 = REDUNDANCIES[1];
    let mut by_strategy = Vec::new();
    for repair in [Repair::Lazy, Repair::Off] {
        for (i, s) in PLOTTED.into_iter().enumerate() {
            let c = find(&cells, s, rs48, repair);
            by_strategy.push(Series {
                label: format!("{}, repair {}", s.name(), repair.name()),
                values: c.report.retrievable,
                colour: i,
                bold: repair != Repair::Off,
            });
        }
    }
    plot_ages(
        &args.out.join("retrievability-by-strategy.svg"),
        "RS(4,8): retrievable by age, per strategy",
        &by_strategy,
    )?;
    let mut by_redundancy = Vec::new();
    // Eager repair is at 1.000 throughout; the table has it.
    for repair in [Repair::Lazy, Repair::Off] {
        for (i, r) in REDUNDANCIES.into_iter().enumerate() {
            let c = find(&cells, Strategy::PaperMax, r, repair);
            by_redundancy.push(Series {
                label: format!("{r}, repair {}", repair.name()),
                values: c.report.retrievable,
                colour: i,
                bold: repair != Repair::Off,
            });
        }
    }
    plot_ages(
        &args.out.join("retrievability-by-redundancy.svg"),
        "paper max{f,1}: retrievable by age",
        &by_redundancy,
    )?;
    plot_load(&args.out.join("load-balance.svg"), &cells, rs48)?;
    eprintln!(
        "wrote {} in {:.1} s",
        args.out.display(),
        elapsed.as_secs_f64()
    );
    Ok(())
}

fn find(cells: &[Cell], s: Strategy, r: Redundancy, repair: Repair) -> &Cell {
    cells
        .iter()
        .find(|c| c.strategy == s && c.redundancy == r && c.repair == repair)
        .expect("every cell was run")
}

fn markdown(cells: &[Cell]) -> String {
    let mut t = String::from(
        "| strategy | redundancy | repair | retrievable 1 d | 7 d | 30 d | overhead placed | mean held | repair MiB/msg | unplaced shards | Gini (day 1) | max/mean |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in cells {
        let r = &c.report;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.1} | {} | {:.2} | {:.1} |",
            c.strategy.name(),
            c.redundancy,
            c.repair.name(),
            r.retrievable[0],
            r.retrievable[1],
            r.retrievable[2],
            r.overhead_placed,
            r.overhead_mean,
            r.repair_bytes_per_message / f64::from(1u32 << 20),
            r.unplaced_shards,
            r.gini,
            r.max_over_mean,
        );
    }
    t
}

/// One line of an age plot.
#[derive(Debug)]
struct Series {
    label: String,
    values: [f64; 3],
    /// Palette index: one per strategy or redundancy.
    colour: usize,
    /// Thick line with filled dots (with repair) or thin with hollow dots.
    bold: bool,
}

/// A line per series: retrievable share against age in days.
fn plot_ages(path: &std::path::Path, title: &str, series: &[Series]) -> Result<()> {
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let lo = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(1.0, f64::min);
    let lo = ((lo * 10.0).floor() / 10.0).clamp(0.0, 0.9);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..31f64, lo..1.0f64)?;
    chart
        .configure_mesh()
        .x_desc("age (days)")
        .y_desc("share retrievable")
        .draw()?;
    for s in series {
        let colour = Palette99::pick(s.colour).to_rgba();
        let line = colour.stroke_width(if s.bold { 3 } else { 1 });
        let dot = if s.bold {
            colour.filled()
        } else {
            colour.stroke_width(1)
        };
        let points: Vec<(f64, f64)> = AGES_DAYS
            .iter()
            .map(|&a| a as f64)
            .zip(s.values.iter().copied())
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), line))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], line));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, dot)))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Bars of the Gini coefficient and max/mean load per strategy, for one
/// redundancy without repair (placement alone), at the end of day 1.
fn plot_load(path: &std::path::Path, cells: &[Cell], r: Redundancy) -> Result<()> {
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(360);
    let data: Vec<(&str, f64, f64)> = PLOTTED
        .iter()
        .map(|&s| {
            let c = &find(cells, s, r, Repair::Off).report;
            (s.name(), c.gini, c.max_over_mean)
        })
        .collect();
    let names: Vec<&str> = data.iter().map(|d| d.0).collect();
    for (area, title, pick, top) in [
        (
            &left,
            format!("{r}, day 1: Gini of bytes per peer"),
            0usize,
            1.0,
        ),
        (
            &right,
            format!("{r}, day 1: max / mean bytes per peer"),
            1,
            data.iter().map(|d| d.2).fold(1.0, f64::max) * 1.15,
        ),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..data.len() as f64, 0f64..top)?;
        let n = names.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(data.len() * 2 + 1)
            .x_label_formatter(&move |x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.01 && i < n.len() {
                    n[i].replace("paper ", "").replace(" (c^0.25)", "")
                } else {
                    String::new()
                }
            })
            .draw()?;
        chart.draw_series(data.iter().enumerate().map(|(i, d)| {
            let v = if pick == 0 { d.1 } else { d.2 };
            Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, v)],
                Palette99::pick(i).filled(),
            )
        }))?;
    }
    root.present()?;
    Ok(())
}
