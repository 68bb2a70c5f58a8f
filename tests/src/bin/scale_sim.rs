//! The supernode overlay's scale simulator (issue 18): runs
//! `vmail_tests::scale::run` for each size, prints the table and writes
//! `docs/scale/results.md` and its plots.
//!
//! ```text
//! cargo run --release -p vmail-tests --bin scale_sim -- [--sizes 50,100,200,1000,10000,100000]
//!     [--seed 1] [--horizon SECS] [--max-sns N] [--max-tracked N] [--out docs/scale]
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use vmail_tests::scale::{self, Params, Report};

/// A plotted line: its label and what it reads from a report.
type Measure = (&'static str, fn(&Report) -> f64);

const DEFAULT_SIZES: [usize; 6] = [50, 100, 200, 1_000, 10_000, 100_000];

struct Args {
    sizes: Vec<usize>,
    seed: u64,
    horizon: u64,
    max_sns: Option<usize>,
    max_tracked: Option<usize>,
    out: PathBuf,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        sizes: DEFAULT_SIZES.to_vec(),
        seed: 1,
        horizon: scale::HORIZON_SECS,
        max_sns: None,
        max_tracked: None,
        out: PathBuf::from("docs/scale"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next().with_context(|| {
                format!("{flag} needs a value (see the doc at the top of scale_sim.rs)")
            })
        };
        match flag.as_str() {
            "--sizes" => {
                a.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--sizes takes peer counts separated by commas, e.g. 50,1000")?
            }
            "--seed" => a.seed = value()?.parse().context("--seed takes an integer")?,
            "--horizon" => a.horizon = value()?.parse().context("--horizon takes seconds")?,
            "--max-sns" => a.max_sns = Some(value()?.parse().context("--max-sns takes a count")?),
            "--max-tracked" => {
                a.max_tracked = Some(value()?.parse().context("--max-tracked takes a count")?)
            }
            "--out" => a.out = PathBuf::from(value()?),
            other => bail!(
                "unknown flag {other}; use --sizes, --seed, --horizon, --max-sns, --max-tracked or --out"
            ),
        }
    }
    if a.sizes.iter().any(|n| *n < 2) {
        bail!("every size must be at least 2 peers");
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse()?;
    let mut reports = Vec::new();
    for &n in &args.sizes {
        let mut p = Params::new(n, args.seed);
        p.horizon_secs = args.horizon;
        if let Some(m) = args.max_sns {
            p.sn.max_sns = m;
        }
        if let Some(m) = args.max_tracked {
            p.sn.max_tracked_peers = m;
        }
        let started = std::time::Instant::now();
        let r = scale::run(&p);
        eprintln!("N = {n}: {:.1} s", started.elapsed().as_secs_f64());
        reports.push(r);
    }
    let md = table(&reports, &args);
    print!("{md}");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let results = args.out.join("results.md");
    std::fs::write(&results, &md).with_context(|| format!("writing {}", results.display()))?;
    plot_sns(&args.out.join("supernodes.svg"), &reports)?;
    plot_hops(&args.out.join("lookup-hops.svg"), &reports)?;
    plot_bytes(&args.out.join("gossip-bytes.svg"), &reports)?;
    eprintln!("wrote {} and its plots", results.display());
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map_or("not reached".into(), |v| format!("{v:.1}"))
}

fn kb(b: f64) -> String {
    format!("{:.1}", b / 1000.0)
}

fn table(rs: &[Report], a: &Args) -> String {
    let mut s = String::new();
    let cmd = format!(
        "cargo run --release -p vmail-tests --bin scale_sim -- --sizes {} --seed {} --horizon {}{}{}",
        a.sizes
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(","),
        a.seed,
        a.horizon,
        a.max_sns
            .map_or(String::new(), |m| format!(" --max-sns {m}")),
        a.max_tracked
            .map_or(String::new(), |m| format!(" --max-tracked {m}")),
    );
    let _ = writeln!(s, "# Scale simulator results\n\nWritten by `{cmd}`.\n");
    let _ = writeln!(s, "## Convergence, re-attach, supernodes\n");
    let _ = writeln!(
        s,
        "| N | qualified | first advert (s) | converged (intervals after first advert) | set changes to the kill | SNs settled | unattached before kill | orphans | re-attach p50 / p95 (ms, close) | orphans left | SNs under churn | SN ratio under churn | most unattached under churn | most views under churn | fresh adverts / book cap |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rs {
        let conv = match (r.converged, r.first_advert) {
            (Some(c), Some(f)) => Some((c.saturating_sub(f)) as f64 / r.interval as f64),
            _ => None,
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} / {:.0} | {} | {}–{} | {:.4}–{:.4} | {} | {} | {} / {} |",
            r.n,
            r.qualified,
            r.first_advert.map_or("none".into(), |t| t.to_string()),
            opt(conv),
            r.set_changes,
            r.settled_sns,
            r.unattached_before_kill,
            r.orphans,
            scale::quantile(&r.reattach_ms, 0.5),
            scale::quantile(&r.reattach_ms, 0.95),
            r.orphans_left,
            r.churn_sns.0,
            r.churn_sns.1,
            r.churn_ratio.0,
            r.churn_ratio.1,
            r.churn_unattached,
            r.churn_views,
            r.max_fresh.0,
            r.max_fresh.1,
        );
    }
    let _ = writeln!(
        s,
        "\nA silent death (no connection close) adds the heartbeat patience, {:.0} ms, to every re-attach.\n",
        rs.first().map_or(0.0, |r| r.silent_extra_ms)
    );
    let _ = writeln!(
        s,
        "## Kademlia lookups (K = {}, alpha = {})\n",
        scale::kad::K_VALUE,
        scale::kad::ALPHA
    );
    let _ = writeln!(
        s,
        "| N | log2 N | hops to a provider p50 / p95 (all online) | rounds to K closest p50 / p95 (all online) | requests (all online) | hops to a provider p50 / p95 (churn) | rounds to K closest p50 / p95 (churn) | requests (churn) | timeouts (churn) | no provider (churn) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for r in rs {
        let (a, c) = (&r.lookups_static, &r.lookups_churn);
        let _ = writeln!(
            s,
            "| {} | {:.1} | {} / {} | {} / {} | {:.1} | {} / {} | {} / {} | {:.1} | {:.1} | {} |",
            r.n,
            (r.n as f64).log2(),
            a.provider_hops.0,
            a.provider_hops.1,
            a.rounds.0,
            a.rounds.1,
            a.requests,
            c.provider_hops.0,
            c.provider_hops.1,
            c.rounds.0,
            c.rounds.1,
            c.requests,
            c.timeouts,
            c.provider_missed,
        );
    }
    let _ = writeln!(s, "\n## Advert gossip, per peer per minute\n");
    let _ = writeln!(
        s,
        "| N | adverts / min | signed advert (B) | payload (KB) | wire mean (KB) | wire p99 (KB) | wire max over SNs (KB) | slowest first arrival (ms) | its hops |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for r in rs {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {:.0} | {} |",
            r.n,
            r.adverts_per_min,
            r.advert_bytes,
            kb(r.payload),
            kb(r.wire.0),
            kb(r.wire.1),
            kb(r.wire.2),
            r.gossip_last.0,
            r.gossip_last.1,
        );
    }
    s
}

fn plot_sns(path: &Path, rs: &[Report]) -> Result<()> {
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let t_max = rs
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.t))
        .max()
        .unwrap_or(1) as f64;
    let y_max = rs
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.sns))
        .max()
        .unwrap_or(1) as f64
        + 1.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("Serving supernodes over time", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..t_max / 60.0, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("minutes (kill at 10, churn from 12)")
        .y_desc("supernodes")
        .draw()?;
    for (i, r) in rs.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = r
            .samples
            .iter()
            .map(|s| (s.t as f64 / 60.0, s.sns as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(2)))?
            .label(format!("N = {}", r.n))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_hops(path: &Path, rs: &[Report]) -> Result<()> {
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = rs.iter().map(|r| (r.n as f64).log2()).fold(1.0, f64::max) + 1.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("Lookup hops and rounds against log2 N", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..x_max, 0f64..x_max)?;
    chart
        .configure_mesh()
        .x_desc("log2 N")
        .y_desc("hops or rounds")
        .draw()?;
    let series: [Measure; 4] = [
        ("hops to a provider, p50, churn", |r| {
            r.lookups_churn.provider_hops.0
        }),
        ("hops to a provider, p95, churn", |r| {
            r.lookups_churn.provider_hops.1
        }),
        ("rounds to K closest, p50, churn", |r| {
            r.lookups_churn.rounds.0
        }),
        ("rounds to K closest, p95, churn", |r| {
            r.lookups_churn.rounds.1
        }),
    ];
    for (i, (label, f)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = rs.iter().map(|r| ((r.n as f64).log2(), f(r))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, colour.filled())))?;
    }
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 0.0), (x_max, x_max)],
            BLACK.stroke_width(1),
        ))?
        .label("log2 N")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    chart
        .draw_series(std::iter::once(Cross::new(
            (14.0, 4.0),
            6,
            RED.stroke_width(2),
        )))?
        .label("IPFS DHT, ~4 hops at 16k peers")
        .legend(|(x, y)| Cross::new((x + 9, y), 4, RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_bytes(path: &Path, rs: &[Report]) -> Result<()> {
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let y_max = rs.iter().map(|r| r.wire.1).fold(100_000.0, f64::max) * 2.0;
    let x_max = rs.iter().map(|r| r.n).max().unwrap_or(2) as f64 * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("Advert gossip per peer per minute", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d((20f64..x_max).log_scale(), (100f64..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("peers")
        .y_desc("bytes per minute")
        .draw()?;
    let series: [Measure; 3] = [
        ("payload", |r| r.payload),
        ("wire, mean", |r| r.wire.0),
        ("wire, p99", |r| r.wire.1),
    ];
    for (i, (label, f)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = rs.iter().map(|r| (r.n as f64, f(r).max(100.0))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, colour.filled())))?;
    }
    chart
        .draw_series(LineSeries::new(
            vec![(20.0, 50_000.0), (x_max, 50_000.0)],
            RED.stroke_width(1),
        ))?
        .label("goal: 50 KB")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
